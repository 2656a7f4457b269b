"""The Triton interpreter (TRITON_INTERPRET=1, how the tests run the kernels on a CPU) as our kernels need it.

Only under the interpreter, and only where the installed Triton needs it: compiled kernels
never come here.
"""

from __future__ import annotations


def mend_index() -> bool:
    """Let the Triton interpreter's scalars be loop bounds again under NumPy 2.4+; whether it mended.

    The interpreter holds a scalar (an int argument, a program id) as a 1-element array, and
    `range(0, d)` in a kernel calls its `__index__`: `int(array)`. NumPy 2.4 turned that
    conversion of a 1-element, 1-D array from a deprecation warning into a TypeError, and the
    interpreter of Triton 3.6 (the one torch 2.11 pins) still makes it; later Triton squeezes the
    array first. Here the interpreter's `__index__` is probed on a stand-in and, only where it
    fails, replaced by Triton's later one for the length of each interpreted launch (the
    interpreter installs and restores its patches per launch). Compiled kernels never see this.
    """
    try:
        import operator
        from types import SimpleNamespace

        import numpy as np
        from triton.runtime import interpreter

        original = interpreter._patch_lang_tensor
        scope = interpreter._LangPatchScope()

        class Probe:  # stands for tl.tensor while the interpreter patches it
            pass

        original(Probe, scope)
        probe = Probe()
        probe.handle = SimpleNamespace(data=np.array([3], dtype=np.int32))
        try:
            if operator.index(probe) == 3:
                return False  # this interpreter's scalars index as they are
        except TypeError:
            pass
        finally:
            scope.restore()
    except Exception:  # another Triton's internals: leave them as they are
        return False

    def mended(tensor, scope, *args, **kwargs):
        original(tensor, scope, *args, **kwargs)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = mended
    return True
