"""Export is atomic and safe: --force swaps, kills leave nothing that passes for complete, bad places fail early.

Conversion itself is optimum-intel's (the `tiny_phi3_ov` fixture and the end-to-end tier run it);
here a converter that copies an exported folder stands in for it, so what surrounds it is tested in
seconds."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import copying_converter, run_cli

import ovchat
from ovchat import OvchatError, manifest

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def mount(tmp_path):
    """Mount a small tmpfs (options given by the test) and unmount it afterwards."""
    mounted = []

    def _mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point

    yield _mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_existing_target_needs_force(tiny_phi3_dir, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(OvchatError, match="already exists: pass --force"):
        ovchat.export(str(tiny_phi3_dir), target)
    assert (target / "keep.txt").read_text() == "mine"  # nothing lost


def test_force_swaps_whole_folders(tiny_phi3_dir, tiny_phi3_ov, tmp_path):
    target = tmp_path / "out"
    shutil.copytree(tiny_phi3_ov, target)
    (target / "stale.bin").write_text("old file")
    path = ovchat.export(str(tiny_phi3_dir), target, force=True, check=False, converter=copying_converter(tiny_phi3_ov))
    assert path == target.resolve()
    assert not (target / "stale.bin").exists()  # never a merge of old and new
    assert manifest.verify(target, hashes=True) is not None
    debris = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.") and p.name != ".out.lock"]
    assert not debris  # no temporary, source or old folders left beside the target
    assert ovchat.load(str(target)).generate("Hi") == "Hello world!"


def test_killed_export_leaves_nothing_that_passes_for_complete(tiny_phi3_dir, tiny_phi3_ov, tmp_path):
    target = tmp_path / "killed"
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import ovchat; "
        "from helpers import copying_converter; "
        f"ovchat.export({str(tiny_phi3_dir)!r}, {str(target)!r}, check=False, "
        f"converter=copying_converter({str(tiny_phi3_ov)!r}, pause=600))"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    # Kill once the exporter has written the model into its temporary folder.
    while time.time() < deadline and not list(tmp_path.glob(".killed.tmp-*/openvino_model.xml")):
        assert child.poll() is None, "export ended before it could be killed"
        time.sleep(0.05)
    assert list(tmp_path.glob(".killed.tmp-*/openvino_model.xml")), "the exporter never wrote its model"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    if target.exists():  # the kill came after the atomic rename: then it must be whole
        assert manifest.verify(target, hashes=True) is not None
    else:
        with pytest.raises(OvchatError, match="no such file or folder"):
            ovchat.load(str(target))
    assert list(tmp_path.glob(".killed.tmp-*")) or target.exists()
    # The next export cleans the debris and succeeds.
    ovchat.export(str(tiny_phi3_dir), target, force=True, check=False, converter=copying_converter(tiny_phi3_ov))
    assert manifest.verify(target, hashes=True) is not None
    assert not list(tmp_path.glob(".killed.tmp-*")) and not list(tmp_path.glob(".killed.src-*"))


def test_concurrent_export_to_one_target_is_refused(tiny_phi3_dir, tmp_path):
    target = tmp_path / "locked"
    with open(tmp_path / ".locked.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OvchatError, match="another export to .* is running"):
            ovchat.export(str(tiny_phi3_dir), target)
    assert not target.exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda p: os.truncate(p / "openvino_model.bin", 1000),
            r"openvino_model\.bin has 1000 bytes, the manifest says",
        ),
        (lambda p: (p / "openvino_tokenizer.bin").unlink(), r"openvino_tokenizer\.bin is missing"),
    ],
)
def test_load_names_a_damaged_file(tiny_phi3_ov, tmp_path, damage, message):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_phi3_ov, copy)
    damage(copy)
    with pytest.raises(OvchatError, match=message):
        ovchat.load(str(copy))


@as_root
def test_read_only_location_fails_before_work(tiny_phi3_dir, mount):
    point = mount("ro,size=1m")
    logs: list[str] = []
    with pytest.raises(OvchatError, match=f"cannot write to {point}"):
        ovchat.export(str(tiny_phi3_dir), point / "out", log=logs.append)
    assert not [line for line in logs if "exporting with" in line]  # refused before any conversion


@as_root
def test_full_disk_fails_before_work_and_leaves_nothing(tiny_phi3_dir, mount):
    point = mount("size=2m")
    logs: list[str] = []
    with pytest.raises(OvchatError, match="not enough free disk space"):
        ovchat.export(str(tiny_phi3_dir), point / "out", log=logs.append)
    assert not [line for line in logs if "exporting with" in line]
    assert [p.name for p in point.iterdir()] in ([], [".out.lock"])


@pytest.mark.slow
def test_the_command_line_says_it_in_one_line(tiny_phi3_dir, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    done = run_cli("export", str(tiny_phi3_dir), "-o", str(target))
    assert done.returncode == 1
    assert "already exists: pass --force" in done.stderr and "Traceback" not in done.stderr
    assert (target / "keep.txt").read_text() == "mine"


def test_force_refuses_a_folder_that_is_not_an_export(tiny_phi3_dir, tmp_path):
    (tmp_path / "thesis.txt").write_text("years of work")
    with pytest.raises(OvchatError, match="is not an exported model folder; refusing to replace it"):
        ovchat.export(str(tiny_phi3_dir), tmp_path, force=True)
    with pytest.raises(OvchatError, match="holds the source model"):
        ovchat.export(str(tiny_phi3_dir), tiny_phi3_dir, force=True)
    assert (tmp_path / "thesis.txt").read_text() == "years of work"


def test_a_kill_between_the_force_renames_gives_the_old_folder_back(tiny_phi3_dir, tiny_phi3_ov, tmp_path):
    # --force renames the old folder aside, then the new one into place; a kill in between leaves
    # only the aside copy. The next export to that target puts it back before anything else.
    shutil.copytree(tiny_phi3_ov, tmp_path / ".out.old-12345")
    with pytest.raises(OvchatError, match="already exists"):
        ovchat.export(str(tiny_phi3_dir), tmp_path / "out")
    assert manifest.verify(tmp_path / "out", hashes=True) is not None
    assert not (tmp_path / ".out.old-12345").exists()
