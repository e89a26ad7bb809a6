"""Generates docs/api.md, the API reference, from the comments in the protos.

The proto comments are the documentation (STYLE.md, habit 1); this turns
them into one Markdown page so that they can be read without the sources.
It compiles protos/sessiond/v1 with grpc_tools.protoc into a descriptor set
that keeps source info (the comments), and walks it: services and their RPCs
first, then messages and enums, each file in name order. Nothing but the
descriptor goes in, so the page changes exactly when the contract does;
scripts/gen_clients.sh --check fails when the committed page is stale.

Usage: gen_api_docs.py [OUTPUT]   (default docs/api.md)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = "sessiond.v1"

# Field numbers in descriptor.proto, for SourceCodeInfo paths.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE, SERVICE_METHOD = 2, 2

SCALARS = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64: "fixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32: "fixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED32: "sfixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64: "sfixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32: "sint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT64: "sint64",
}


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "sessiond" / "v1").glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.binpb"
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}",
             f"--descriptor_set_out={out}", "--include_source_info", *files],
            check=True,
        )
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


class Comments:
    """The leading comment of each element of one file, by source path."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        self.by_path = {
            tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location
        }

    def __call__(self, *path: int) -> str:
        text = self.by_path.get(tuple(path), "")
        lines = [line[1:] if line.startswith(" ") else line for line in text.splitlines()]
        return "\n".join(lines).strip()


def one_line(text: str) -> str:
    """A comment as a table cell: paragraphs joined, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def anchor(full_name: str) -> str:
    return full_name.replace(".", "").lower()


def type_link(name: str) -> str:
    name = name.lstrip(".")
    if name.startswith(PACKAGE + "."):
        return f"[{name[len(PACKAGE) + 1:]}](#{anchor(name)})"
    return f"`{name}`"


def scalar_or_name(field: descriptor_pb2.FieldDescriptorProto) -> str:
    return SCALARS.get(field.type) or field.type_name.lstrip(".").removeprefix(PACKAGE + ".")


def field_type(field: descriptor_pb2.FieldDescriptorProto,
               maps: dict[str, descriptor_pb2.DescriptorProto]) -> str:
    if field.type_name.lstrip(".") in maps:
        entry = maps[field.type_name.lstrip(".")]
        key, value = entry.field[0], entry.field[1]
        # In backticks: a bare map<...> would read as an HTML tag.
        return f"`map<{scalar_or_name(key)}, {scalar_or_name(value)}>`"
    base = f"`{SCALARS[field.type]}`" if field.type in SCALARS else type_link(field.type_name)
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return f"repeated {base}"
    if field.proto3_optional:
        return f"optional {base}"
    return base


def render_enum(out: list[str], full: str, enum: descriptor_pb2.EnumDescriptorProto,
                comments: Comments, path: tuple[int, ...]) -> None:
    out += [f'<a id="{anchor(full)}"></a>', f"### {full[len(PACKAGE) + 1:]} (enum)", ""]
    if text := comments(*path):
        out += [text, ""]
    out += ["| value | number | description |", "| --- | --- | --- |"]
    for i, value in enumerate(enum.value):
        out.append(f"| `{value.name}` | {value.number} | "
                   f"{one_line(comments(*path, ENUM_VALUE, i))} |")
    out.append("")


def render_message(out: list[str], full: str, message: descriptor_pb2.DescriptorProto,
                   comments: Comments, path: tuple[int, ...],
                   maps: dict[str, descriptor_pb2.DescriptorProto]) -> None:
    out += [f'<a id="{anchor(full)}"></a>', f"### {full[len(PACKAGE) + 1:]}", ""]
    if text := comments(*path):
        out += [text, ""]
    if message.field:
        out += ["| field | number | type | description |", "| --- | --- | --- | --- |"]
        for i, field in enumerate(message.field):
            oneof = ""
            if field.HasField("oneof_index") and not field.proto3_optional:
                oneof = f" (oneof `{message.oneof_decl[field.oneof_index].name}`)"
            out.append(f"| `{field.name}` | {field.number} | {field_type(field, maps)}{oneof} | "
                       f"{one_line(comments(*path, MESSAGE_FIELD, i))} |")
    else:
        out.append("No fields.")
    out.append("")
    for i, nested in enumerate(message.nested_type):
        if not nested.options.map_entry:
            render_message(out, f"{full}.{nested.name}", nested, comments,
                           (*path, MESSAGE_NESTED, i), maps)
    for i, enum in enumerate(message.enum_type):
        render_enum(out, f"{full}.{enum.name}", enum, comments, (*path, MESSAGE_ENUM, i))


def map_entries(files: Iterable[descriptor_pb2.FileDescriptorProto]
                ) -> dict[str, descriptor_pb2.DescriptorProto]:
    found = {}

    def walk(prefix: str, messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for m in messages:
            if m.options.map_entry:
                found[f"{prefix}.{m.name}"] = m
            walk(f"{prefix}.{m.name}", m.nested_type)

    for f in files:
        walk(f.package, f.message_type)
    return found


def render(files: list[descriptor_pb2.FileDescriptorProto]) -> str:
    files = sorted((f for f in files if f.package == PACKAGE), key=lambda f: f.name)
    maps = map_entries(files)
    out = [
        "# sessiond.v1 API reference",
        "",
        "<!-- Generated by scripts/gen_api_docs.py from the comments in",
        "     protos/sessiond/v1; edit the protos, then run `make clients`. -->",
        "",
        "Generated from the comments in `protos/sessiond/v1/*.proto`, the contract.",
        "Errors are `google.rpc.Status` values in the `grpc-status-details-bin` trailer,",
        'with an `ErrorInfo` (domain "sessiond.v1") and, for bad input, a `BadRequest`.',
        "Clients: Python (`client/sessiond`), Go (`client/go`), TypeScript",
        "(`client/typescript`) and Rust (`client/rust`).",
        "",
        "## Services",
        "",
    ]
    for f in files:
        comments = Comments(f)
        for si, service in enumerate(f.service):
            full = f"{PACKAGE}.{service.name}"
            out += [f'<a id="{anchor(full)}"></a>', f"### {service.name}", "",
                    f"Defined in `{f.name}`.", ""]
            if text := comments(FILE_SERVICE, si):
                out += [text, ""]
            out += ["| RPC | request | response |", "| --- | --- | --- |"]
            for method in service.method:
                stream = "stream " if method.server_streaming else ""
                link = f"[{method.name}](#{anchor(full + '.' + method.name)})"
                out.append(f"| {link} | {type_link(method.input_type)} | "
                           f"{stream}{type_link(method.output_type)} |")
            out.append("")
            for mi, method in enumerate(service.method):
                out += [f'<a id="{anchor(full + "." + method.name)}"></a>',
                        f"#### {service.name}.{method.name}", ""]
                if text := comments(FILE_SERVICE, si, SERVICE_METHOD, mi):
                    out += [text, ""]
    out += ["## Messages and enums", ""]
    for f in files:
        comments = Comments(f)
        out += [f"Defined in `{f.name}`:", ""]
        for i, message in enumerate(f.message_type):
            render_message(out, f"{PACKAGE}.{message.name}", message, comments,
                           (FILE_MESSAGE, i), maps)
        for i, enum in enumerate(f.enum_type):
            render_enum(out, f"{PACKAGE}.{enum.name}", enum, comments, (FILE_ENUM, i))
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else ROOT / "docs" / "api.md"
    target.write_text(render(list(descriptor_set().file)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
