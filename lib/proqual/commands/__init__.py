"""Sub-commands of the ``proqual`` CLI, one module each (see :mod:`proqual.cli`)."""
