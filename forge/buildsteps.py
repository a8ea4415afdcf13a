"""The install steps of a detected build (``forge.detect``), as POSIX shell run in the build sandbox.

Each step runs on the node, in the release dir, as the App's uid, so the interpreter it checks
is the one the App will run with: a version asked for by ``.python-version``/``runtime.txt``/
``engines.node`` that the node lacks fails the build with both versions named.

**The build cache.** The builder binds the App's own cache dir (``DATA/buildcache/APP``, owned by
the App's uid, 0700) at ``CACHE_PATH`` in the sandbox — no other App's cache exists there, so a
build can never write another App's cache. Inside it:

- ``env/py-KEY`` / ``env/node-KEY``: a finished ``.venv`` / ``node_modules``, KEY = sha256 of the
  dependency file(s), the interpreter's exact version, the machine (``uname -m``) and the libc.
  A hit copies it into the release (no network at all) and rewrites the venv's script shebangs
  to the new path; a miss installs from the registry and then stores a copy (written under a
  temporary name and renamed, so a build killed halfway never leaves a half entry). Using an
  entry touches it: disk GC removes least recently used entries first (``forge.nodeagent.buildcache``).
- ``pip``, ``uv``, ``npm``, ``yarn``, ``poetry``, ``pdm``: the tools' download caches, kept between
  builds of the App, so a changed lockfile downloads only what changed.
- ``tools/NAME``: uv, poetry or pdm bootstrapped from PyPI when the node has none on PATH.

Without the bind (a sandbox-less dev agent) the steps run the same way with no caching.
"""

from __future__ import annotations

import shlex
from typing import Final

CACHE_PATH: Final[str] = "/forge-cache"
INSTALL_WORDS: Final[dict[str, str]] = {
    "pip": "pip install -r requirements.txt into .venv",
    "pipenv": "pip install of Pipfile.lock's default packages into .venv",
    "uv": "uv sync --frozen into .venv",
    "poetry": "poetry install --only main into .venv",
    "pdm": "pdm sync --prod into .venv",
    "npm": "npm ci",
    "npm-install": "npm install (no lockfile)",
    "pnpm": "pnpm install --frozen-lockfile",
    "yarn": "yarn install --frozen-lockfile",
}

_CACHE_SETUP = f"""C=${{FORGE_BUILD_CACHE:-{CACHE_PATH}}}; if [ -d "$C" ] && [ -w "$C" ]; then mkdir -p "$C/env"; else C=; fi
ARCH="$(uname -m) $( (ldd --version 2>&1 || true) | head -n 1)"
"""

_RESTORE = """if [ -n "$C" ] && [ -n "$E" ] && [ -d "$E" ] && cp -a "$E" "$DEST" 2>/dev/null; then
  echo "==> build cache hit: $WHAT from ${E#$C/} (no download)"
  touch "$E"
  HIT=1
else
  rm -rf "$DEST"  # a copy cut short (the entry pruned meanwhile): install instead
  [ -n "$C" ] && [ -n "$E" ] && echo "==> build cache miss: ${E#$C/}; installing from the registry"
  HIT=
fi
"""

_STORE = """if [ -n "$C" ] && [ -n "$E" ] && [ -z "$HIT" ]; then
  rm -rf "$E.tmp.$$"; cp -a "$DEST" "$E.tmp.$$" && rm -rf "$E" && mv "$E.tmp.$$" "$E"
  echo "==> stored $WHAT in the build cache as ${E#$C/}"
fi
"""


def path_prefix(language: str) -> str:
    """What every detected command starts with: the App's own tools first on PATH."""
    sub = ".venv/bin" if language == "python" else "node_modules/.bin"
    return f'export PATH="$PWD/{sub}:$PATH"; '


def _python_pick(version: str | None, source: str | None) -> str:
    if version is None:
        return 'PY=$(command -v python3) || { echo "no python3 on this node" >&2; exit 1; }\n'
    minor = ".".join(version.split(".")[:2])
    want, src = shlex.quote(version), shlex.quote(source or "")
    return f"""PY=$(command -v python{minor} || command -v python3) || {{ echo "no python3 on this node" >&2; exit 1; }}
V=$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
case "$V" in {want}|{want}.*) ;; *)
  HAVE=$(ls /usr/bin /usr/local/bin 2>/dev/null | grep -E '^python3\\.[0-9]+$' | sort -u | tr '\\n' ' ')
  echo "Python {version} is asked for by "{src}" but this node has Python $V ($PY; installed: $HAVE)" >&2
  exit 1;;
esac
"""


def _tool(name: str) -> str:
    """Put ``name`` on PATH: the node's own, else a copy bootstrapped from PyPI into the cache."""
    return f"""if ! command -v {name} >/dev/null 2>&1; then
  T="${{C:-/tmp}}/tools/{name}"
  if [ ! -x "$T/bin/{name}" ]; then
    echo "==> installing {name} from PyPI (the node has none)"
    rm -rf "$T"; "$PY" -m venv "$T"; "$T/bin/pip" install -q {name}
  fi
  export PATH="$T/bin:$PATH"
fi
"""


_PY_INSTALL: Final[dict[str, str]] = {
    "pip": '"$PY" -m venv .venv\n.venv/bin/pip install --no-input -r requirements.txt\n',
    "pipenv": """"$PY" -m venv .venv
"$PY" -c 'import json; d = json.load(open("Pipfile.lock"))["default"]
print("\\n".join(k + v.get("version", "") for k, v in d.items() if "version" in v or not v.get("git")))' > /tmp/forge-requirements.txt
.venv/bin/pip install --no-input -r /tmp/forge-requirements.txt
""",
    "uv": _tool("uv")
    + 'UV_PROJECT_ENVIRONMENT="$PWD/.venv" UV_PYTHON_DOWNLOADS=never UV_NATIVE_TLS=1 '
    + 'uv sync --frozen --no-dev --no-install-project --python "$PY"\n',
    "poetry": _tool("poetry")
    + '"$PY" -m venv .venv\nPOETRY_VIRTUALENVS_IN_PROJECT=true VIRTUAL_ENV="$PWD/.venv" '
    + "poetry install --only main --no-root --no-interaction\n",
    "pdm": _tool("pdm")
    + '"$PY" -m venv .venv\npdm use -f "$PWD/.venv/bin/python"\npdm sync --prod --no-self\n',
}
_PY_KEY_FILES: Final[dict[str, str]] = {
    "pip": "requirements.txt",
    "pipenv": "Pipfile.lock",
    "uv": "uv.lock pyproject.toml",
    "poetry": "poetry.lock pyproject.toml",
    "pdm": "pdm.lock pyproject.toml",
}


def python_install(
    installer: str,
    dep_file: str,
    version: str | None,
    source: str | None,
    also_keyed: tuple[str, ...] = (),
    reusable: bool = True,
) -> str:
    """One shell step: check the interpreter, restore ``.venv`` from the cache or install it.

    ``also_keyed``: more files the dependency set depends on (``-r``/``-c`` of requirements.txt);
    ``reusable`` False (it installs the repository's own code, ``-e .``): never reuse an installed
    set, only the download caches."""
    key_files = " ".join(shlex.quote(f) for f in (*_PY_KEY_FILES[installer].split(), *also_keyed))
    entry = 'E="$C/env/py-$KEY"' if reusable else 'E=; echo "==> installs the repository itself: no reuse"'

    caches = (
        'if [ -n "$C" ]; then export PIP_CACHE_DIR="$C/pip" UV_CACHE_DIR="$C/uv" '
        'POETRY_CACHE_DIR="$C/poetry" PDM_CACHE_DIR="$C/pdm"; fi\n'
    )
    return (
        "set -e\n"
        + _CACHE_SETUP
        + _python_pick(version, source)
        + 'V=$("$PY" -c \'import sys; print("%d.%d.%d" % sys.version_info[:3])\')\n'
        + f'KEY=$( {{ sha256sum {key_files}; echo "python $V {installer}"; echo "$ARCH"; }}'
        + " | sha256sum | cut -c1-24)\n"
        + f'{entry}; DEST=.venv; WHAT="Python $V dependencies"\n'
        + _RESTORE
        + 'if [ -n "$HIT" ]; then\n'
        # the scripts' shebangs name the venv the entry was made in; aim them at this one
        + '  for f in .venv/bin/*; do if [ -f "$f" ] && [ ! -L "$f" ]; then '
        + 'sed -i "1s|^#!.*/bin/python[0-9.]*\\$|#!$PWD/.venv/bin/python|" "$f"; fi; done\n'
        + "else\n"
        + caches
        + _PY_INSTALL[installer]
        + "fi\n"
        + _STORE
    )


def node_install(installer: str, dep_file: str, major: int | None, op: str, want: str | None) -> str:
    """One shell step: check node's version, restore ``node_modules`` from the cache or install it."""
    check = ""
    if major is not None:
        test = f'[ "$M" -ge {major} ]' if op == ">=" else f'[ "$M" -eq {major} ]'
        check = (
            f'M=${{V%%.*}}; if ! {test}; then echo "Node {want} is asked for by package.json '
            f'engines.node but this node has Node $V ($(command -v node))" >&2; exit 1; fi\n'
        )
    install = {
        "npm": "npm ci --no-audit --no-fund",
        "pnpm": 'npx --yes pnpm@9 install --frozen-lockfile --store-dir "${C:-/tmp}/pnpm"',
        "yarn": 'npx --yes yarn@1 install --frozen-lockfile --cache-folder "${C:-/tmp}/yarn"',
    }[installer]
    if dep_file == "package.json":
        install = "npm install --no-audit --no-fund"
    keyed = dep_file if dep_file == "package.json" else f"{dep_file} package.json"
    return (
        "set -e\n"
        + _CACHE_SETUP
        + 'V=$(node -p process.versions.node 2>/dev/null) || { echo "this node has no Node.js (node)" >&2; exit 1; }\n'
        + check
        + f'KEY=$( {{ sha256sum {keyed}; echo "node $V {installer}"; echo "$ARCH"; }} | sha256sum | cut -c1-24)\n'
        + 'E="$C/env/node-$KEY"; DEST=node_modules; WHAT="Node $V dependencies"\n'
        + "rm -rf node_modules\n"
        + _RESTORE
        + 'if [ -z "$HIT" ]; then\n'
        + '  if [ -n "$C" ]; then export npm_config_cache="$C/npm"; fi\n'
        + f"  {install}\n"
        + "fi\n"
        + _STORE
    )
