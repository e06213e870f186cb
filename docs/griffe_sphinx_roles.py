"""A griffe extension for the API reference (mkdocs.yml): reStructuredText bits -> Markdown.

The docstrings are plain prose with ``double backticks``, Sphinx roles such as
:func:`~napari_promptseg.propagate`, ``>>>`` examples, ``::`` literal blocks and the odd
underlined heading. Markdown would show a role as ``:func:~napari_promptseg.propagate``, an
example as nested quotes and a heading as a page heading, so before the docstrings are parsed:

- a role becomes inline code that links to the object where the reference renders it (an
  *optional* autorefs link: a name the reference does not render stays plain code, no warning);
- a run of ``>>>`` / ``...`` lines becomes a fenced ``pycon`` block;
- a paragraph's closing ``::`` becomes ``:`` (the indented block after it is code in Markdown too);
- an underlined heading becomes a bold line.

Nothing in ``src/`` changes; only the rendered reference does.
"""

from __future__ import annotations

import html
import re

import griffe

UNDERLINE = re.compile(r"^\s*([-=~^])\1{2,}\s*$")
ROLE = re.compile(r":(?:py:)?(func|meth|class|mod|data|attr|exc|obj|const|ref):`(~?)([^`]+?)`")
EXPLICIT = re.compile(r"^(.*?)\s*<([^<>]+)>$")  # :meth:`title <target>`


def _candidates(obj, target: str) -> list[str]:
    """Full paths ``target`` may mean, seen from ``obj`` (Sphinx's lookup, simplified)."""
    module = obj if obj.is_module else obj.module
    if target.startswith("."):  # this module's member, or its package's (a sibling module)
        parts, rest = module.path.split("."), target.lstrip(".")
        up = len(target) - len(rest)
        out = []
        for drop in (up - 1, up):
            if 0 <= drop < len(parts):
                out.append(".".join([*parts[: len(parts) - drop], rest]))
        return out
    scopes = []
    o = obj
    while o is not None:
        scopes.append(o.path)
        o = o.parent
    return [f"{s}.{target}" for s in scopes] + [target]


def _resolve(root, path: str):
    try:
        return root.modules_collection[path]
    except (KeyError, ValueError, AttributeError):
        return None


def _convert(obj, loader, text: str) -> str:
    def sub(m: re.Match) -> str:
        role, tilde, target = m.groups()
        target = target.strip()
        explicit = EXPLICIT.match(target)
        if explicit:
            shown, target = explicit.group(1).strip(), explicit.group(2).strip()
        else:
            shown = target.lstrip(".").rsplit(".", 1)[-1] if tilde else target.lstrip(".")
        if role in ("func", "meth") and not shown.endswith(")"):
            shown += "()"
        ident = None
        try:
            for cand in _candidates(obj, target):
                found = _resolve(loader, cand)
                if found is not None:
                    ident = found.target_path if found.is_alias else found.path
                    break
        except Exception:  # noqa: BLE001 - an unresolvable name stays plain code
            ident = None
        code = f"<code>{html.escape(shown)}</code>"
        if ident is None:
            return code
        return f'<autoref identifier="{html.escape(ident)}" optional>{code}</autoref>'

    return ROLE.sub(sub, text)


def _blocks(text: str) -> str:
    """Doctest runs -> fenced blocks, ``::`` -> ``:``, underlined headings -> bold lines."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            run = []
            while i < len(lines) and (lines[i].strip().startswith((">>>", "...")) and run or
                                      lines[i].strip().startswith(">>>")):
                run.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].strip())
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += [f"{indent}```pycon", *(indent + r for r in run), f"{indent}```"]
            if i < len(lines) and lines[i].strip():
                out.append("")
            continue
        if (i + 1 < len(lines) and stripped and UNDERLINE.match(lines[i + 1])
                and len(lines[i + 1].strip()) >= len(stripped) and not UNDERLINE.match(line)):
            out.append(f"**{stripped}**")
            out.append("")
            i += 2
            continue
        if stripped == "::":
            i += 1
            continue
        if line.endswith("::") and not stripped.startswith((":", "..")):
            line = line[:-1]
        out.append(line)
        i += 1
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring of the package once it is loaded."""

    def on_package(self, *, pkg, loader, **kwargs) -> None:
        seen: set[int] = set()

        def walk(obj) -> None:
            if id(obj) in seen or obj.is_alias:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = _convert(obj, loader, _blocks(obj.docstring.value))
            for member in obj.members.values():
                walk(member)

        walk(pkg)
