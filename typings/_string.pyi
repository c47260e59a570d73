from collections.abc import Iterator

def formatter_parser(
    format_string: str, /
) -> Iterator[tuple[str, str | None, str | None, str | None]]: ...
