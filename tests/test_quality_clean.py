"""Clean training volumes besides the phantoms: train-quality --clean and reslice-clean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from proqual.cli import main
from proqual.errors import InputError, ValidationError
from proqual.io.readers import Volume, read_volume, write_volume
from proqual.quality.clean import acquisitions, clean_files, clean_volumes, parse_clean_spec, reslice
from proqual.study import Sequence


def _ramp_volume(direction=None) -> Volume:
    """A 0.5 mm isotropic cube whose object (a cube well inside it) has intensity 10 + the sum of the
    world coordinates / 4. With the identity direction both are symmetric under swapping axes, so
    resampled values can be checked against world positions whichever axis a cut went across."""
    shape = (80, 80, 80)
    spacing = (0.5, 0.5, 0.5)
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    vol = Volume(np.zeros(shape, np.float32), spacing, (7.0, 7.0, 7.0), direction)
    idx = np.indices(shape).reshape(3, -1).astype(float)
    world = (direction @ np.diag(spacing) @ idx).T + np.asarray(vol.origin)
    ramp = 10.0 + world.sum(1) / 4.0
    inside = np.all((idx >= 80 // 6) & (idx < 80 - 80 // 6), axis=0)
    vol.array[...] = np.where(inside, ramp, 0.0).reshape(shape).astype(np.float32)
    return vol


def test_parse_clean_spec():
    assert parse_clean_spec("runs/clean") == (Sequence.OTHER, Path("runs/clean"))
    assert parse_clean_spec("t2w=a/b.nii.gz") == (Sequence.T2W, Path("a/b.nii.gz"))
    # a prefix that is no sequence is part of the path
    assert parse_clean_spec("x=1/b.nii.gz") == (Sequence.OTHER, Path("x=1/b.nii.gz"))


def test_clean_files_and_volumes_name_what_is_wrong(tmp_path):
    with pytest.raises(InputError, match="missing"):
        clean_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="folder holds no image files") as exc:
        clean_files(tmp_path / "empty")
    assert exc.value.source == str(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not an image file"):
        clean_files(tmp_path / "notes.txt")
    vol = _ramp_volume()
    write_volume(vol, tmp_path / "vols" / "b.nii.gz")
    write_volume(vol, tmp_path / "vols" / "a.mha")
    (tmp_path / "vols" / "readme.txt").write_text("not an image")
    assert [p.name for p in clean_files(tmp_path / "vols")] == ["a.mha", "b.nii.gz"]
    got = clean_volumes([str(tmp_path / "vols"), f"ADC={tmp_path / 'vols' / 'a.mha'}"])
    assert [c.sequence for c in got] == [Sequence.OTHER, Sequence.OTHER, Sequence.ADC]
    assert all(c.gland is None for c in got)
    np.testing.assert_allclose(got[2].volume.array, vol.array)
    neg = Volume(vol.array - 5.0, vol.spacing, vol.origin, vol.direction)
    write_volume(neg, tmp_path / "neg.nii.gz")
    with pytest.raises(InputError, match="negative values") as exc:
        clean_volumes([str(tmp_path / "neg.nii.gz")])
    assert exc.value.source == str(tmp_path / "neg.nii.gz")


def test_reslice_keeps_world_positions_and_draws_within_the_ranges():
    vol = _ramp_volume()
    rng = np.random.default_rng(5)
    shapes = set()
    for _ in range(9):
        acq = reslice(vol, rng, in_plane=(0.8, 1.6), slice_mm=(2.0, 3.0), slices=6)
        s, s2, t = acq.spacing
        assert s == pytest.approx(s2) and 0.8 <= s <= 1.6 and 2.0 <= t <= 3.0
        assert acq.shape[2] == 6 and acq.array.min() >= 0
        np.testing.assert_allclose(acq.direction, np.eye(3))  # an axial stack
        # the slab lies within the object: every slice holds object voxels
        assert all((acq.array[:, :, z] > 1.0).any() for z in range(acq.shape[2]))
        # away from the object's border, smoothing and linear interpolation keep a linear ramp: each
        # voxel's value is the ramp at its world position
        idx = np.indices(acq.shape).reshape(3, -1).T[:: max(1, int(np.prod(acq.shape)) // 4000)]
        world = np.array([acq.index_to_world(i) for i in idx])
        src_idx = np.array([vol.world_to_index(w) for w in world])
        deep = np.all((src_idx >= 80 // 6 + 12) & (src_idx <= 80 - 80 // 6 - 13), axis=1)
        assert deep.sum() > 20
        values = acq.array[idx[:, 0], idx[:, 1], idx[:, 2]]
        np.testing.assert_allclose(values[deep], 10.0 + world[deep].sum(1) / 4.0, atol=0.05)
        shapes.add(acq.shape)
    assert len(shapes) > 1


def test_reslice_cuts_across_every_axis_and_keeps_the_stack_axial():
    """A volume stored with its superior-inferior axis first: every acquisition keeps that axis as its
    slice axis, and the cut goes across each of the object's three axes (told apart by an object that
    is long along one axis only)."""
    shape = (60, 60, 60)
    arr = np.zeros(shape, np.float32)
    arr[25:35, 25:35, 5:55] = 100.0  # a rod along index axis 2
    perm = [[0, 1, 0], [0, 0, 1], [1, 0, 0]]  # index axis 0 runs superior-inferior (LPS z)
    vol = Volume(arr, (0.5, 0.5, 0.5), (0.0, 0.0, 0.0), np.asarray(perm, float))
    rng = np.random.default_rng(1)
    rod_lengths = set()
    for _ in range(12):
        acq = reslice(vol, rng, in_plane=(1.0, 1.0), slice_mm=(1.0, 1.0), slices=4)
        assert acq.shape[0] == 4 and acq.spacing[0] == pytest.approx(1.0)  # slices along axis 0
        np.testing.assert_allclose(acq.direction, perm)
        # in-plane extent of the rod (mm along the longer in-plane axis)
        inplane = (acq.array > 50).any(axis=0)
        rod_lengths.add(int(max(np.ptp(np.nonzero(inplane)[i]) for i in range(2))) > 10)
    assert rod_lengths == {True, False}  # cut along the rod (it lies in the slices) and across it


def test_reslice_is_seeded_and_checks_its_ranges():
    vol = _ramp_volume()
    a = acquisitions(vol, n=2, seed=3, slices=5)
    b = acquisitions(vol, n=2, seed=3, slices=5)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.array, y.array)
        assert x.spacing == y.spacing
    assert not np.array_equal(a[0].array, acquisitions(vol, n=1, seed=4, slices=5)[0].array)
    # a slab longer than the volume keeps the slices that fit
    short = reslice(vol, np.random.default_rng(0), slice_mm=(5.0, 5.0), slices=24)
    assert short.shape[2] == int(39.5 // 5.0) + 1 == 8
    with pytest.raises(ValidationError, match="in_plane"):
        reslice(vol, np.random.default_rng(0), in_plane=(2.0, 1.0))
    with pytest.raises(ValidationError, match="slices"):
        reslice(vol, np.random.default_rng(0), slices=0)
    with pytest.raises(ValidationError, match="n: must be >= 1"):
        acquisitions(vol, n=0, seed=0)


def test_reslice_clean_command_writes_seeded_acquisitions(tmp_path, capsys):
    src = write_volume(_ramp_volume(), tmp_path / "src.nii.gz")
    out = tmp_path / "acq"
    args = ["reslice-clean", str(src), "--out", str(out), "--n", "3", "--seed", "2", "--slices", "5"]
    assert main(args) == 0
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["src_000.nii.gz", "src_001.nii.gz", "src_002.nii.gz"]
    assert "3/3" in capsys.readouterr().out
    first = read_volume(files[0]).array
    assert main([*args[:3], str(tmp_path / "again"), *args[4:]]) == 0
    np.testing.assert_array_equal(read_volume(tmp_path / "again" / "src_000.nii.gz").array, first)
    capsys.readouterr()
    assert main(["reslice-clean", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "x")]) == 1
    assert "nope.nii.gz: not an image file" in capsys.readouterr().err
    assert main(["reslice-clean", str(src), "--out", str(tmp_path / "x"), "--n", "0"]) == 1
    assert "--n: must be >= 1" in capsys.readouterr().err
    assert main(["reslice-clean", str(src), "--out", str(tmp_path / "x"), "--slice-mm", "3", "1"]) == 1
    assert "slice_mm: needs 0 < LO <= HI" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_train_quality_with_clean_volumes_records_them(tmp_path, capsys):
    import torch

    folder = tmp_path / "clean"
    for i, acq in enumerate(acquisitions(_ramp_volume(), n=2, seed=0, slices=6)):
        write_volume(acq, folder / f"v{i}.nii.gz")
    out = tmp_path / "q.pt"
    args = ["train-quality", "--n-studies", "1", "--per-volume", "1", "--n-val", "1", "--epochs", "1"]
    args += ["--no-eval", "--clean", str(folder), "--clean", f"t2w={folder / 'v0.nii.gz'}"]
    args += ["--sequence-weight", "OTHER=3", "--out", str(out)]
    assert main(args) == 0
    ckpt = torch.load(out, weights_only=True)
    data = ckpt["meta"]["stages"][0]["data"]
    # 3 phantom volumes (1 each) + 2 OTHER (3 each) + 1 more T2W (1): 10 samples per epoch
    assert "by sequence ADC 1, HBV 1, OTHER 3, T2W 1 (10 samples per epoch)" in data
    assert f"plus 3 clean volumes from --clean {folder}, t2w={folder / 'v0.nii.gz'}" in data
    assert f"--clean {folder} --clean t2w={folder / 'v0.nii.gz'}" in ckpt["meta"]["command"]
    records = ckpt["meta"]["stages"][0]["clean_volumes"]
    assert [(Path(r["path"]).name, r["sequence"]) for r in records] == [
        ("v0.nii.gz", "OTHER"),
        ("v1.nii.gz", "OTHER"),
        ("v0.nii.gz", "T2W"),
    ]
    assert records[0]["sha256"] == records[2]["sha256"] != records[1]["sha256"]
    capsys.readouterr()
    # a bad clean path stops the run before any phantom is made, and nothing is written
    bad = tmp_path / "bad.pt"
    assert main(["train-quality", "--no-eval", "--clean", str(tmp_path / "none"), "--out", str(bad)]) == 1
    got = capsys.readouterr()
    assert f"{tmp_path / 'none'}: no such file or folder" in got.err and "phantom studies" not in got.out
    assert (
        main(
            [
                "train-quality",
                "--skip-upstream",
                "--init",
                str(out),
                "--clean",
                str(folder),
                "--out",
                str(bad),
            ]
        )
        == 1
    )
    assert "--clean: adds upstream training volumes" in capsys.readouterr().err
    assert not bad.exists()
