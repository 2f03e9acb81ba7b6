"""CRC-32C: the crc32c package's extension module, loaded without the package's __init__.

crc32c/__init__.py imports importlib.metadata (for its __version__) and its command line
(argparse): about 40 ms of every rawsend process's start-up, for one function.  The
extension is found where the package lies and loaded as the package itself would load it
(and under the same name, so a later ``import crc32c`` reuses it); anything unexpected
falls back to the plain import.
"""

from __future__ import annotations


def _load():
    try:
        import importlib.util
        from importlib.machinery import ExtensionFileLoader, PathFinder
        import sys

        name = "crc32c._crc32c"
        module = sys.modules.get(name)
        if module is None:
            package = PathFinder.find_spec("crc32c")  # locates the package; runs none of it
            spec = PathFinder.find_spec(name, package.submodule_search_locations) if package else None
            if spec is None or not isinstance(spec.loader, ExtensionFileLoader):
                raise ImportError(name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[name] = module
        return module.crc32c
    except (ImportError, AttributeError, OSError):
        from crc32c import crc32c
        return crc32c


crc32c = _load()
