#!/usr/bin/env python3
"""Checks the promises of docs/architecture.md about the source tree:

1. A module's private header is included by its own module only: a quoted
   include in <module>/lib or <module>/daemon is a public door
   ("formica/<module>/x.h" under some <module>/include), a shared internal
   header ("formica/internal/x.h" under common/internal), a generated proto,
   or a header of the same module; lib/ never includes daemon/.
2. Public doors include only public doors (never formica/internal/).
3. No source file outside tests/ and bench/ is over 800 lines, unless its
   opening comment says why ("longer than 800 lines because").
4. An example (examples/<name>/) is built on the public doors only: it
   includes public doors, its own headers and its generated protos.

usage: check_layout.py SOURCE_ROOT      prints each breach; exit 1 if any
"""
import os
import re
import sys

MODULES = ["common", "registry", "rpc", "dts", "dms", "dds", "ldc"]
LIMIT = 800
EXEMPT_MARK = "longer than 800 lines because"
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
THIRD_PARTY = ("absl/", "grpcpp/", "google/", "rocksdb/", "yaml-cpp/", "spdlog/", "pg_query",
               "etcd/", "gtest/", "gmock/")


def sources(directory):
    for base, _, names in os.walk(directory):
        for name in sorted(names):
            if name.endswith((".h", ".cc")):
                yield os.path.join(base, name)


def main(root):
    breaches = []
    public = set()
    for module in MODULES:
        inc = os.path.join(root, module, "include")
        for path in sources(inc):
            public.add(os.path.relpath(path, inc))
    internal_dir = os.path.join(root, "common", "internal")
    internal = {os.path.relpath(p, internal_dir) for p in sources(internal_dir)}

    def allowed(include, here, module, half):
        if include in public or include in internal and half != "include":
            return True
        if re.match(r"formica/\w+/v1/.*\.pb\.h$", include) or include.startswith(THIRD_PARTY):
            return True
        if half == "include":
            return False
        # A header of the same module: beside the file, or in its lib/ half.
        halves = ["lib", "daemon"] if half == "daemon" else [half]
        if half == "internal":
            halves = ["internal", "lib", "daemon"]
        for h in halves:
            base = os.path.join(root, module, h)
            if os.path.exists(os.path.join(os.path.dirname(here), include)) and \
                    os.path.commonpath([os.path.dirname(here), base]) == base:
                return True
            if os.path.exists(os.path.join(base, include)):
                return True
        return False

    for module in MODULES:
        for half in ["include", "lib", "daemon", "internal"]:
            for path in sources(os.path.join(root, module, half)):
                text = open(path, encoding="utf-8").read()
                rel = os.path.relpath(path, root)
                for include in INCLUDE.findall(text):
                    if not allowed(include, path, module, half):
                        breaches.append(f"{rel}: includes \"{include}\", which is not "
                                        f"{'a public door' if half == 'include' else 'its own module' + chr(39) + 's or a public door'}")
    examples = os.path.join(root, "examples")
    for name in sorted(os.listdir(examples)) if os.path.isdir(examples) else []:
        here = os.path.join(examples, name)
        for path in sources(here):
            text = open(path, encoding="utf-8").read()
            for include in INCLUDE.findall(text):
                own = os.path.exists(os.path.join(here, include)) or \
                    os.path.exists(os.path.join(here, "proto", include.replace(".grpc.pb.h", ".proto").replace(".pb.h", ".proto")))
                if include in public or include.startswith(THIRD_PARTY) or own:
                    continue
                breaches.append(f"{os.path.relpath(path, root)}: includes \"{include}\", which is "
                                f"not a public door (examples use the public API only)")
    for top in MODULES + ["tools", "examples"]:
        for path in sources(os.path.join(root, top)):
            text = open(path, encoding="utf-8").read()
            lines = text.count("\n")
            if lines > LIMIT and EXEMPT_MARK not in text[:2000]:
                breaches.append(f"{os.path.relpath(path, root)}: {lines} lines; the limit is "
                                f"{LIMIT} (or say why in its opening comment: "
                                f"\"{EXEMPT_MARK} ...\")")
    for breach in breaches:
        print(breach)
    print(f"{len(breaches)} breach(es)")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
