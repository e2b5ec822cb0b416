"""The project's own plugins, one sub-package per method, each registered through an entry point."""
