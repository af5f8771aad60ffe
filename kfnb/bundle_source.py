"""Ship the notebook's names by source, for replicas that run another Python.

cloudpickle ships a function or class defined in the notebook as its code object,
which only the kernel's own Python minor version can load; the stock image runs
Python 3.11. So when the replicas' Python is known to differ from the kernel's,
`plan` sends what the cell reads in forms every Python 3 reads:

- functions and classes defined in the notebook (``__main__``) as their source
  text, found through linecache as tracebacks find it, to be exec'd in the replica;
  the globals they read are shipped the same way, recursively;
- modules, and functions and classes importable from a module, as import references;
- plain data (numbers, strings, bytes, and lists, tuples, sets and dicts of them)
  pickled with the standard pickle, whose format is the same in every Python 3.

Anything else (an array, a model, any other object) could only be pickled: it
blocks, and the error names it.
"""

from __future__ import annotations

import ast
import linecache
import operator
import sys
import textwrap
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

KERNEL_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_PLAIN_CONTAINERS = (list, tuple, set, frozenset)


def needed(replica_python: str | None) -> bool:
    """Whether names go by source: the replicas' Python is known, and not the kernel's."""
    return replica_python is not None and replica_python != KERNEL_PYTHON


@dataclass
class Definition:
    """A notebook function or class: its source, where it was written, and the other
    names it is bound to in the notebook (``train = train_mnist``)."""

    name: str
    filename: str
    line: int  # of the first line of ``source`` (its first decorator) in ``filename``
    source: str
    aliases: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """How each name the cell reads travels, when names go by source."""

    references: dict[str, str] = field(default_factory=dict)  # name -> "module[:attr]"
    plain: dict[str, Any] = field(default_factory=dict)  # name -> plain data
    definitions: list[Definition] = field(default_factory=list)  # in the order to exec
    blocked: dict[str, str] = field(default_factory=dict)  # name -> why it cannot travel

    def blocked_message(self, replica_python: str) -> str:
        """One line naming what blocks and the two fixes."""
        names = ", ".join(f"{name!r} ({why})" for name, why in self.blocked.items())
        return (
            f"the replicas run Python {replica_python} but this kernel runs Python "
            f"{KERNEL_PYTHON}, so these notebook values cannot be sent to them: {names}. "
            f"Create them inside the cell (load data there, --include files), or use --image "
            f"with an image of Python {KERNEL_PYTHON} (notebook functions and classes travel "
            f"as their source)"
        )


def _describe(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}".removeprefix("builtins.")


def is_plain(value: Any, _seen: set[int] | None = None) -> bool:
    """Data the standard pickle writes the same way in every Python 3 (exact types only:
    a subclass may pickle through its own code)."""
    seen = _seen if _seen is not None else set()
    if type(value) in _PLAIN_SCALARS:
        return True
    if id(value) in seen:
        return False  # a container holding itself
    seen.add(id(value))
    if type(value) in _PLAIN_CONTAINERS:
        return all(is_plain(item, seen) for item in value)
    if type(value) is dict:
        return all(is_plain(k, seen) and is_plain(v, seen) for k, v in value.items())
    return False


def import_reference(value: Any, keras_path: Callable[[Any], str | None]) -> str | None:
    """``module:qualname`` for a function or class the replica can import, else None.

    ``keras_path`` gives Keras 3's tf.keras names, resolved through ``tensorflow`` there.
    """
    keras = keras_path(value)
    if keras is not None:
        return f"tensorflow:{keras}"
    module = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "__main__":
        return None
    if "<" in qualname or module not in sys.modules:
        return None
    try:
        found = operator.attrgetter(qualname)(sys.modules[module])
    except AttributeError:
        return None
    return f"{module}:{qualname}" if found is value else None


_Defined = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _first_line(node: _Defined) -> int:
    """The line of its first decorator, as a function's co_firstlineno counts."""
    return min([d.lineno for d in node.decorator_list] + [node.lineno])


def _class_method_lines(cls: type) -> list[tuple[str, int]]:
    """Where the class's own methods are written: cell and line of each (some may be in
    no cell: those a decorator such as ``dataclass`` generates)."""
    found = []
    for attr in vars(cls).values():
        func = getattr(attr, "__func__", None) or getattr(attr, "fget", None) or attr
        code = getattr(func, "__code__", None)
        own = getattr(func, "__qualname__", "").startswith(f"{cls.__qualname__}.")
        if code is not None and own:
            found.append((code.co_filename, code.co_firstlineno))
    return found


def _find_definition(value: Any, filename: str, line: int) -> tuple[str, int, str] | None:
    """The source of ``value``'s def or class statement in the cell ``filename``, the one
    whose first line is ``line`` (a function) or that holds ``line`` (a class)."""
    text = "".join(linecache.getlines(filename))
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    is_class = isinstance(value, type)
    nodes = [
        node
        for node in ast.walk(tree)
        if isinstance(node, _Defined)
        and node.name == value.__name__
        and isinstance(node, ast.ClassDef) == is_class
        and (
            node.lineno <= line <= (node.end_lineno or node.lineno)
            if is_class
            else _first_line(node) == line
        )
    ]
    if not nodes:
        return None
    node = nodes[-1]
    first = _first_line(node)
    lines = text.splitlines(keepends=True)[first - 1 : node.end_lineno]
    return filename, first, textwrap.dedent("".join(lines))


def definition_source(value: Any) -> tuple[str, int, str] | str:
    """The cell, first line and source of a notebook function or class, or why not."""
    if value.__qualname__ != value.__name__ or not value.__name__.isidentifier():
        return "a lambda, or defined inside a function or class: define it at the top of a cell"
    if isinstance(value, types.FunctionType):
        places = [(value.__code__.co_filename, value.__code__.co_firstlineno)]
    else:
        places = _class_method_lines(value)
    for filename, line in places:
        found = _find_definition(value, filename, line)
        if found is not None:
            return found
    if isinstance(value, type):  # kfnb finds a class's cell through its methods
        return "a class with no method written in the notebook, or whose cell is gone: add one"
    return "its source is not in this kernel's cells any more: run its cell again"


def _notebook_definition(value: Any) -> Any:
    """The function or class the notebook wrote for ``value`` (for a decorated one, such
    as a ``tf.function``, the function it wraps), or None when ``value`` is not one."""
    wrapped = getattr(value, "__wrapped__", None)
    written = wrapped if isinstance(wrapped, types.FunctionType) else value
    if isinstance(written, (types.FunctionType, type)) and written.__module__ == "__main__":
        return written
    return None


def _names_read(source: str) -> set[str]:
    from kfnb.bundle import referenced_names  # the cell's own rule, for the definitions

    read, _ = referenced_names(source)
    return read


def plan(
    read: set[str],
    namespace: Mapping[str, Any],
    *,
    skip: set[str],
    bound: set[str],
    keras_path: Callable[[Any], str | None],
) -> Plan:
    """How the names in ``read`` (and the names the shipped definitions read) travel.

    ``bound`` are names the cell binds itself: those that cannot travel are left out,
    as `build_bundle` leaves them out when they cannot be pickled.
    """
    result = Plan()
    seen: set[str] = set()
    by_object: dict[int, Definition] = {}

    def visit(name: str, reader: str | None) -> None:
        if name in seen or name in skip or name not in namespace:
            return
        seen.add(name)
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            reference = keras_path(value)
            result.references[name] = f"tensorflow:{reference}" if reference else value.__name__
            return
        reference = import_reference(value, keras_path)
        if reference is not None:
            result.references[name] = reference
            return
        if is_plain(value):
            result.plain[name] = value
            return
        why = _describe(value)
        written = _notebook_definition(value)
        if written is not None:
            why = _ship_definition(name, value, written)
            if not why:
                return
        if name not in bound:
            result.blocked[name] = f"{why}, read by {reader}" if reader else why

    def _ship_definition(name: str, value: Any, written: Any) -> str:
        """Queue the definition of ``value`` (``written`` in the notebook: itself, or the
        function it decorates) after those it needs; '' or why it cannot travel."""
        known = by_object.get(id(value))
        if known is None:
            found = definition_source(written)
            if isinstance(found, str):
                return f"{_describe(value)}, {found}"
            own = written.__name__
            if namespace.get(own) is not value:
                return (
                    f"{_describe(value)} defined as {own!r}, a name the notebook has since "
                    "rebound or deleted: run its cell again"
                )
            known = by_object[id(value)] = Definition(own, *found)
            seen.add(own)
            for needed_name in sorted(_names_read(known.source) - {own}):
                visit(needed_name, own)
            result.definitions.append(known)
        if name != known.name and name not in known.aliases:
            known.aliases.append(name)
        return ""

    for name in sorted(read):
        visit(name, None)
    return result
