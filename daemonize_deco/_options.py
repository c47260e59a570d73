"""Options from a function's signature: ``def main(port: int = 8000)`` gives ``--port 9000``.

The signature is read once, at decoration: a parameter the command line
cannot express is a TypeError naming it, so the mistake shows when the
script is imported.  argparse builds a command's parser only when its
command line carries more than the command word, so a service without
options starts as fast as one written before options existed.

Types: str, int, float, bool (``--verbose`` / ``--no-verbose``),
pathlib.Path, an enum.Enum (its member names) and typing.Literal (its
values) as choices, and any of them ``| None`` with a default of None.  A
parameter without a default is a required option (for ``@main.command``
functions: a positional argument).  An unannotated parameter takes its
default's type, or str.  ``_`` in a name is ``-`` on the line.  A parameter
whose flag another parameter, or a built-in command, gives already is a
TypeError too: argparse would only say so when that command line is parsed.
"""

from __future__ import annotations

import sys

from ._errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence
    from typing import NoReturn

__all__ = [
    "COMMAND_FLAGS",
    "HELP_FLAGS",
    "HelpRequested",
    "Option",
    "Signature",
    "argument_error",
    "docstring_args",
    "make_parser",
    "text_of",
]

_NO_DEFAULT = object()
_SECTION_ENDS = ("Returns:", "Yields:", "Raises:", "Example:", "Examples:", "Note:", "Notes:")
# Every command, a custom one too, takes these (``make_parser``).
HELP_FLAGS = ("-h", "--help")
# The built-in commands' own flags, added beside main's options, and the
# commands that take them: what ``_command_line.FLAGS`` adds (a test checks
# the two agree), written out so that decoration does not load argparse.
COMMAND_FLAGS: dict[str, tuple[str, ...]] = {
    "--timeout": ("stop", "restart"),
    "--json": ("status",),
    "--ready": ("health",),
    "-n": ("logs",),
    "--lines": ("logs",),
    "-f": ("logs",),
    "--follow": ("logs",),
    "--socket": ("systemd-unit",),
    "--image": ("kubernetes-manifest",),
    "--replicas": ("kubernetes-manifest",),
}


class Option:
    """One parameter as it appears on the command line."""

    __slots__ = (
        "choices", "convert", "default", "doc", "flag", "is_flag", "name", "positional",
        "type_name", "variadic",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        *,
        convert: Callable[[str], object],
        type_name: str,
        default: object = _NO_DEFAULT,
        choices: Sequence[str] = (),
        is_flag: bool = False,
        positional: bool = False,
        variadic: bool = False,
        doc: str = "",
    ) -> None:
        self.name = name
        self.flag = "--" + name.replace("_", "-")
        self.convert = convert
        self.type_name = type_name
        self.default = default
        self.choices = tuple(choices)
        self.is_flag = is_flag
        self.positional = positional
        self.variadic = variadic
        self.doc = doc

    @property
    def flags(self) -> tuple[str, ...]:
        """The flags it adds to a parser (none for a positional argument)."""
        if self.positional:
            return ()
        if self.is_flag:
            return (self.flag, "--no-" + self.flag[2:])
        return (self.flag,)

    @property
    def required(self) -> bool:
        """Whether the command line must give it."""
        return self.default is _NO_DEFAULT and not self.variadic

    def words(self, value: object) -> list[str]:
        """The command-line words that give ``value`` (none for the default)."""
        if value == self.default and not self.required:
            return []
        if self.is_flag:
            return [self.flag if value else "--no-" + self.flag[2:]]
        if value is None:
            return []
        text = text_of(value)
        if not text or text.startswith("-"):
            # As two words, "-x" would read as an option and "" is no word at all.
            return [f"{self.flag}={text}"]
        return [self.flag, text]

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add this option (or positional argument) to ``parser``."""
        import argparse  # noqa: PLC0415 -- loaded only when a command line has options

        shown = self.doc.rstrip(".")
        if self.positional:
            nargs = "*" if self.variadic else None
            parser.add_argument(self.name, type=self.convert, nargs=nargs, help=shown or None)
            return
        detail = "required" if self.required else f"default: {text_of(self.default)}"
        help_text = (
            f"{shown} ({self.type_name}, {detail})" if shown else f"{self.type_name}, {detail}"
        )
        if self.is_flag:
            parser.add_argument(
                self.flag, dest=self.name, action=argparse.BooleanOptionalAction, help=help_text
            )
            return
        metavar = "{" + ",".join(self.choices) + "}" if self.choices else self.name.upper()
        parser.add_argument(
            self.flag, dest=self.name, type=self.convert, metavar=metavar,
            required=False, help=help_text,
        )  # fmt: skip


def text_of(value: object) -> str:
    """How a value is written on a command line and in a file name (an Enum by its name)."""
    enum = sys.modules.get("enum")
    if enum is not None and isinstance(value, enum.Enum):
        return str(value.name)
    return str(value)


class Signature:
    """A function's parameters as options; empty for a function without any."""

    def __init__(
        self, func: Callable[..., object] | None, *, what: str, commands: bool = False
    ) -> None:
        self.what = what
        self.options: list[Option] = (
            [] if func is None else _read_signature(func, what=what, positional=commands)
        )

    def __bool__(self) -> bool:
        return bool(self.options)

    @property
    def names(self) -> set[str]:
        """The parameters' names."""
        return {option.name for option in self.options}

    def defaults(self) -> dict[str, object] | None:
        """Every parameter's default; None when one is required."""
        if any(option.required or option.positional for option in self.options):
            return None
        return {option.name: option.default for option in self.options}

    def words(self, values: Mapping[str, object]) -> list[str]:
        """The command-line words that give ``values`` (defaults left out)."""
        return [w for o in self.options if o.name in values for w in o.words(values[o.name])]

    def parser(self, prog: str, description: str = "") -> argparse.ArgumentParser:
        """An argparse parser for these options whose errors raise UsageError."""
        parser = make_parser(prog, description)
        for option in self.options:
            option.add_to(parser)
        return parser

    def missing(self, values: Mapping[str, object]) -> list[str]:
        """The flags of required options ``values`` lacks."""
        return [o.flag for o in self.options if o.required and values.get(o.name) is None]

    def fill(self, values: dict[str, object]) -> dict[str, object]:
        """``values`` with the defaults of what the command line did not give."""
        for option in self.options:
            if values.get(option.name) is None and not option.required:
                values[option.name] = option.default
        return values


class HelpRequested(Exception):  # noqa: N818 -- not an error: the way out of argparse
    """``-h``/``--help`` was given: ``text`` is the help to print (status 0)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def make_parser(prog: str, description: str = "") -> argparse.ArgumentParser:
    """An argparse parser whose errors raise UsageError and whose ``--help`` HelpRequested.

    Neither exits nor prints: the command line decides what to print.
    """
    import argparse  # noqa: PLC0415 -- loaded only when a command line has options

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise UsageError(message, usage=self.format_usage().rstrip("\n"))

    class Help(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, *args: object) -> NoReturn:
            raise HelpRequested(parser.format_help().rstrip("\n"))

    parser = Parser(prog=prog, description=description or None, add_help=False, allow_abbrev=False)
    parser.add_argument(*HELP_FLAGS, nargs=0, action=Help, help="show this help and exit")
    return parser


def _read_signature(func: Callable[..., object], *, what: str, positional: bool) -> list[Option]:
    import inspect  # noqa: PLC0415 -- only functions with parameters pay for these
    import typing  # noqa: PLC0415

    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return []  # a builtin without a signature: nothing to read
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:  # noqa: BLE001 -- any failure evaluating annotations is the same
        raise TypeError(f"{what}: cannot evaluate its annotations: {exc}") from None
    docs = docstring_args(getattr(func, "__doc__", None) or "")
    options = []
    for param in signature.parameters.values():
        if param.kind is param.VAR_KEYWORD or (
            param.kind is param.VAR_POSITIONAL and not positional
        ):
            raise TypeError(f"{what}: parameter {param.name!r}: **kwargs/*args cannot be options")
        default = _NO_DEFAULT if param.default is param.empty else param.default
        is_positional = positional and (
            param.kind is param.VAR_POSITIONAL
            or (param.kind is not param.KEYWORD_ONLY and default is _NO_DEFAULT)
        )
        annotation = hints.get(param.name, _NO_DEFAULT)
        if annotation is _NO_DEFAULT and param.kind is param.VAR_POSITIONAL:
            annotation = str
        options.append(
            _option(
                param.name,
                annotation,
                default,
                what=what,
                positional=is_positional,
                variadic=param.kind is param.VAR_POSITIONAL,
                doc=docs.get(param.name, ""),
            )
        )
    _refuse_clashes(options, what=what, built_in={} if positional else COMMAND_FLAGS)
    return options


def _refuse_clashes(
    options: Sequence[Option], *, what: str, built_in: Mapping[str, Sequence[str]]
) -> None:
    """A TypeError for a flag two parameters give, or one a command takes already."""
    given: dict[str, str] = {}
    for option in options:
        for flag in option.flags:
            if flag in HELP_FLAGS:
                raise TypeError(
                    f"{what}: parameter {option.name!r} gives {flag}, which every command "
                    "takes for its help; give the parameter another name"
                )
            if flag in built_in:
                commands = " and ".join(built_in[flag])
                raise TypeError(
                    f"{what}: parameter {option.name!r} gives {flag}, which {commands} "
                    f"take{'s' * (len(built_in[flag]) == 1)} already; "
                    "give the parameter another name"
                )
            if flag in given:
                raise TypeError(
                    f"{what}: parameters {given[flag]!r} and {option.name!r} both give {flag}; "
                    "give one of them another name"
                )
            given[flag] = option.name


def _option(
    name: str,
    annotation: object,
    default: object,
    *,
    what: str,
    positional: bool,
    variadic: bool,
    doc: str,
) -> Option:
    import typing  # noqa: PLC0415

    where = f"{what}: parameter {name!r}"
    if annotation is _NO_DEFAULT:
        if default is None:
            raise TypeError(f"{where} needs a type annotation or a default to take its type from")
        # Unannotated: the default's type, or text (the words are text) without one.
        annotation = str if default is _NO_DEFAULT else type(default)
    optional = False
    args = typing.get_args(annotation)
    if (
        type(None) in args
        and len(args) == 2
        and typing.get_origin(annotation) is not typing.Literal
    ):
        annotation = next(a for a in args if a is not type(None))
        optional = True
        if default is not None:
            raise TypeError(f"{where}: an optional (| None) parameter needs the default None")
    convert, type_name, choices, is_flag = _converter(annotation, where)
    if is_flag and (positional or default is _NO_DEFAULT):
        raise TypeError(f"{where}: a bool parameter needs a default (it becomes a flag)")
    if optional:
        type_name += " or none"
    return Option(
        name, convert=convert, type_name=type_name, default=default, choices=choices,
        is_flag=is_flag, positional=positional, variadic=variadic, doc=doc,
    )  # fmt: skip


def _converter(
    annotation: object, where: str
) -> tuple[Callable[[str], object], str, tuple[str, ...], bool]:
    """How to turn a word into a value of ``annotation``: converter, type name, choices, flag."""
    import typing  # noqa: PLC0415

    if annotation is bool:
        return bool, "flag", (), True
    simple: dict[object, tuple[Callable[[str], object], str]] = {
        str: (str, "text"),
        int: (_integer, "int"),
        float: (_number, "float"),
    }
    if annotation in simple:
        convert, type_name = simple[annotation]
        return convert, type_name, (), False
    if typing.get_origin(annotation) is typing.Literal:
        return _literal(typing.get_args(annotation), where)
    pathlib, enum = sys.modules.get("pathlib"), sys.modules.get("enum")
    if pathlib is not None and annotation is pathlib.Path:
        return _path, "path", (), False
    if enum is not None and isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        members: dict[str, object] = dict(getattr(annotation, "__members__", {}))
        return _enum_member(members), "choice", tuple(members), False
    raise TypeError(
        f"{where}: type {getattr(annotation, '__name__', annotation)!r} cannot be an option "
        "(str, int, float, bool, pathlib.Path, an Enum or a Literal can)"
    )


def argument_error(message: str) -> Exception:
    """The error a converter raises: argparse prefixes it with the option's name."""
    import argparse  # noqa: PLC0415

    return argparse.ArgumentTypeError(message)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argument_error(f"{text!r} is not an integer") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argument_error(f"{text!r} is not a number") from None


def _path(text: str) -> object:
    import pathlib  # noqa: PLC0415 -- loaded already by a script that annotates with it

    return pathlib.Path(text)


def _literal(
    values: tuple[object, ...], where: str
) -> tuple[Callable[[str], object], str, tuple[str, ...], bool]:
    if not values or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{where}: a Literal option takes str or int values")
    by_text = {str(v): v for v in values}

    def convert(text: str) -> object:
        if text not in by_text:
            raise argument_error(f"{text!r} is not one of {', '.join(by_text)}")
        return by_text[text]

    return convert, "choice", tuple(by_text), False


def _enum_member(members: dict[str, object]) -> Callable[[str], object]:
    def convert(text: str) -> object:
        if text not in members:
            raise argument_error(f"{text!r} is not one of {', '.join(members)}")
        return members[text]

    return convert


def docstring_args(doc: str) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring: parameter name to its text."""
    found: dict[str, str] = {}
    lines = doc.expandtabs().splitlines()
    inside = False
    section_indent = entry_indent = -1
    current = ""
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped in ("Args:", "Arguments:", "Parameters:"):
            inside, section_indent, entry_indent = True, indent, -1
            continue
        if not inside:
            continue
        if stripped in _SECTION_ENDS or (stripped and indent <= section_indent):
            break
        if not stripped:
            continue
        if entry_indent < 0:
            entry_indent = indent
        if indent == entry_indent and ":" in stripped:
            head, _, text = stripped.partition(":")
            current = head.split("(")[0].strip().lstrip("*")
            found[current] = text.strip()
        elif current:
            found[current] = f"{found[current]} {stripped}".strip()
    return found
