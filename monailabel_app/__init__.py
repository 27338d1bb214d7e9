"""The ProQual MONAI Label app (see ``main.py``). Thin adapters over :mod:`proqual`."""
