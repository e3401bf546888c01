"""Catch the libstdc++ clash before llama.cpp is loaded into a process that already has one.

A llama.cpp built with a compiler that links its own copy of the C++ runtime (the GPU machine's
wrapper compiler did) exports that copy from `libllama.so`, `libggml*.so`: thousands of `std::`
symbols, among them the runtime's own objects (`std::locale::classic()`, `std::cout`, the
`codecvt` facets). Once torch has loaded the system `libstdc++.so.6` into the same process, the two
copies' locale facets mix and the first `std::ostream` insert crashes (SIGSEGV in
`codecvt::do_unshift`, or `free(): invalid pointer`). An ordinary build only *uses* these symbols;
it never defines them. So the check reads each library's dynamic symbol table (the ELF file
itself, no tool needed) and raises `LibStdCxxClash`, which says how to fix it, instead of crashing.
"""

from __future__ import annotations

import importlib.util
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

# Defined only by the C++ runtime itself (mangled names); an ordinary library leaves them undefined.
RUNTIME_SYMBOLS = frozenset({
    "_ZNSt6locale7classicEv",                                      # std::locale::classic()
    "_ZNSt6localeC1Ev",                                            # std::locale::locale()
    "_ZNSt8ios_base4InitC1Ev",                                     # std::ios_base::Init::Init()
    "_ZSt4cout",                                                   # std::cout
    "_ZNKSt7codecvtIcc11__mbstate_tE10do_unshiftERS0_PcS3_RS3_",  # where the crash landed
})
# Itanium mangling prefixes of names in namespace std (std::, std::basic_string, ostream, ...)
STD_PREFIXES = ("_ZNSt", "_ZNKSt", "_ZSt", "_ZTVSt", "_ZTISt", "_ZTSSt", "_ZNSo", "_ZNSi", "_ZNSs",
                "_ZNKSs", "_ZNSd")
SHT_DYNSYM = 11


class LibStdCxxClash(RuntimeError):
    """llama.cpp's libraries carry their own C++ runtime while this process has the system one."""


@dataclass
class StdExports:
    """What one shared library defines of namespace std."""

    path: Path
    std_symbols: int = 0                                  # defined std:: symbols (templates included)
    runtime_symbols: list[str] = field(default_factory=list)  # of RUNTIME_SYMBOLS, the ones it defines

    @property
    def carries_runtime(self) -> bool:
        return bool(self.runtime_symbols)


def defined_dynamic_symbols(path: str | Path) -> list[str] | None:
    """Names a 64-bit little-endian ELF shared library defines in its dynamic symbol table
    (what `nm -D --defined-only` lists); None for any other file (not ELF, 32-bit, big-endian)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names: list[str] = []
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if sh_type != SHT_DYNSYM or not entsize:
            continue
        str_offset = sections[link][4]
        for pos in range(offset, offset + size, entsize):
            st_name, _st_info, _st_other, st_shndx = struct.unpack_from("<IBBH", data, pos)
            if st_shndx == 0 or st_name == 0:  # undefined (imported) or unnamed
                continue
            end = data.index(b"\0", str_offset + st_name)
            names.append(data[str_offset + st_name:end].decode(errors="replace"))
    return names


def std_exports(path: str | Path) -> StdExports | None:
    names = defined_dynamic_symbols(path)
    if names is None:
        return None
    return StdExports(Path(path), sum(n.startswith(STD_PREFIXES) for n in names),
                      sorted(RUNTIME_SYMBOLS.intersection(names)))


def loaded_libstdcxx(maps_path: str = "/proc/self/maps") -> str | None:
    """The path of the libstdc++ this process has mapped, or None (none yet, or not Linux)."""
    try:
        lines = Path(maps_path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if "libstdc++.so" in Path(path).name:
            return path
    return None


def llama_cpp_lib_dirs() -> list[Path]:
    """Where llama-cpp-python loads its libraries from, found without importing (and loading) it:
    its package's `lib/` folder and `LLAMA_CPP_LIB_PATH`, the override its bindings read."""
    dirs = []
    if os.environ.get("LLAMA_CPP_LIB_PATH"):
        dirs.append(Path(os.environ["LLAMA_CPP_LIB_PATH"]))
    spec = importlib.util.find_spec("llama_cpp")
    if spec and spec.submodule_search_locations:
        dirs.append(Path(next(iter(spec.submodule_search_locations))) / "lib")
    return [d for d in dirs if d.is_dir()]


def check_no_clash(lib_dirs: list[Path] | None = None, loaded: str | bool | None = True) -> list[StdExports]:
    """Raise LibStdCxxClash if a llama.cpp library defines the C++ runtime while this process has
    the system libstdc++ mapped (`loaded`: True reads /proc/self/maps; a path or None to say so).
    Returns what each library exports, for the record."""
    system = loaded_libstdcxx() if loaded is True else loaded or None
    found = []
    for folder in llama_cpp_lib_dirs() if lib_dirs is None else lib_dirs:
        seen = set()
        for lib in sorted(Path(folder).glob("lib*.so*")):
            stem = lib.name.split(".so")[0]  # libfoo.so, .so.0, .so.0.1: links or copies of one library
            if stem in seen or not lib.is_file():
                continue
            seen.add(stem)
            exports = std_exports(lib)
            if exports is not None:
                found.append(exports)
    carriers = [e for e in found if e.carries_runtime]
    preloaded = "libstdc++" in os.environ.get("LD_PRELOAD", "")
    if carriers and system and not preloaded:
        names = ", ".join(f"{e.path.name} ({e.std_symbols} std:: symbols)" for e in carriers)
        raise LibStdCxxClash(
            f"llama.cpp's libraries carry their own copy of the C++ runtime ({names}; they define "
            f"{', '.join(carriers[0].runtime_symbols[:2])}), while this process already has the "
            f"system one ({system}, loaded by torch or another extension). Loading both crashes "
            "(SIGSEGV in std::codecvt, or free(): invalid pointer). Fix either way: rebuild llama.cpp "
            "with the system compiler (CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++; "
            f"scripts/device_bench.sh does), or start Python with LD_PRELOAD={system}.")
    return found
