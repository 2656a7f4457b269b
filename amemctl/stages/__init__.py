"""The built-in stages; each module registers its stages through the plugin hooks."""
