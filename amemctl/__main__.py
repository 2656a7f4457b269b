"""`python -m amemctl` is the `amemctl` command, and how each rank of an `--nproc` or torchrun run starts."""

from amemctl import launch

if launch.in_worker():  # stop signals are taken from the rank's very start
    launch.run_worker()
else:
    from amemctl.cli import main

    main()
