"""The libstdc++ clash check, on two small shared libraries built here with the system g++."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from lazymoe.bench.libstdcxx import LibStdCxxClash, check_no_clash, loaded_libstdcxx, std_exports

SOURCE = '#include <iostream>\nextern "C" void hello() { std::cout << "hi" << std::endl; }\n'


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    if not shutil.which("g++"):
        pytest.skip("no g++ here to build the test libraries")
    out = tmp_path_factory.mktemp("libstdcxx")
    (out / "x.cpp").write_text(SOURCE)
    own, plain = out / "own", out / "plain"
    own.mkdir(), plain.mkdir()
    base = ["g++", "-shared", "-fPIC", str(out / "x.cpp"), "-o"]
    subprocess.run([*base, str(plain / "libllama.so")], check=True)
    built = subprocess.run([*base, str(own / "libllama.so"), "-static-libstdc++"], capture_output=True)
    if built.returncode != 0:
        pytest.skip(f"g++ cannot link libstdc++ statically here: {built.stderr.decode()[-200:]}")
    return own, plain


def test_a_library_that_carries_the_runtime_is_told_apart_from_one_that_uses_it(libs):
    own, plain = libs
    carried, used = std_exports(own / "libllama.so"), std_exports(plain / "libllama.so")
    assert carried.carries_runtime and "_ZNSt6locale7classicEv" in carried.runtime_symbols
    assert carried.std_symbols > 1000  # a whole copy of the runtime's std:: symbols
    assert not used.carries_runtime


def test_the_clash_is_raised_only_when_the_process_has_the_system_libstdcxx(libs, monkeypatch):
    own, plain = libs
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    system = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"
    with pytest.raises(LibStdCxxClash, match=r"system compiler.*LD_PRELOAD"):
        check_no_clash([own], loaded=system)
    assert check_no_clash([own], loaded=None)[0].carries_runtime  # nothing loaded yet: no clash
    assert not check_no_clash([plain], loaded=system)[0].carries_runtime
    monkeypatch.setenv("LD_PRELOAD", system)  # the documented fix: the system copy wins
    check_no_clash([own], loaded=system)


def test_non_elf_files_are_skipped_and_the_process_maps_are_read(tmp_path):
    (tmp_path / "libfake.so").write_text("not an ELF file")
    assert std_exports(tmp_path / "libfake.so") is None and check_no_clash([tmp_path], loaded="x") == []
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 42    /usr/lib/libstdc++.so.6.0.33\n")
    assert loaded_libstdcxx(str(maps)) == "/usr/lib/libstdc++.so.6.0.33"
    assert loaded_libstdcxx(str(tmp_path / "missing")) is None
