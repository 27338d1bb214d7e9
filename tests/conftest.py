"""Shared fixtures: phantom studies (the fixture factory of the whole suite)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def phantom_picai_dir(tmp_path_factory):
    """A PI-CAI folder of 4 small ("test" preset) phantom studies, written once per session."""
    from proqual.phantom import write_picai

    root = tmp_path_factory.mktemp("picai")
    write_picai(root, n=4, seed=0, preset="test")
    return root


@pytest.fixture(scope="session")
def phantom_study():
    """One small phantom study in memory."""
    from proqual.phantom import make_study

    return make_study(0, seed=0, preset="test")
