#!/usr/bin/env python3
"""Replays the Dockerfile's build stage without Docker (scripts/image-check.sh runs it).

`replay` lists the build context as Docker would send it (.dockerignore applied with Docker's
own matching rules), copies exactly what the build stage's COPY lines take from it into ROOT
(ROOT stands for the image's `/`, so WORKDIR /src is ROOT/src), and runs the stage's RUN lines
there in order, so both cargo builds happen against the files the image would have at that
point. When a RUN that calls cargo fails, it names the workspace member manifest or declared
target that is missing, if one is: cargo loads all of them, even for members it does not build.
If nothing the stage depends on changed since the last replay (each step's text, the content
of what its COPY lines take, the toolchain, these scripts) and that replay's binaries are still
in place, the RUN lines are reported CACHED instead, as Docker's layer cache would;
IMAGE_CHECK_NO_CACHE=1 runs them anyway. `artifacts` prints, for each `COPY --from=<build
stage>` of the final stage, the path under cargo's target dir that it copies.

Only what this Dockerfile uses is supported (FROM, WORKDIR, COPY, RUN in the build stage);
anything else fails loudly rather than being skipped, because a skipped step would make the
replay differ from the image. Standard library only.
"""

import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatchcase
from pathlib import Path

from dockerignore import excluded_by, go_clean, list_context, read_dockerignore

PREFIX = "image-check"


class Failure(Exception):
    """One line that says what is wrong; the caller prints it and exits non-zero."""


# --- the Dockerfile ---------------------------------------------------------------------------


def instructions(text):
    """(line number, INSTRUCTION, arguments) with continuations joined and comments dropped."""
    for line in text.splitlines():
        directive = re.match(r"#\s*escape\s*=\s*(\S)", line)
        if directive and directive.group(1) != "\\":
            raise Failure("Dockerfile: only the default escape character `\\` is supported")
        if not line.startswith("#"):
            break
    pending, start = None, 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (pending is not None and not stripped):
            continue
        if pending is None:
            if not stripped:
                continue
            pending, start = "", number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1]
            continue
        pending += raw
        name, args = re.match(r"(\S+)\s*(.*)", pending.strip(), re.S).groups()
        yield start, name.upper(), args.strip()
        pending = None
    if pending is not None:
        raise Failure(f"Dockerfile:{start}: the file ends inside a continued line")


def split_flags(args):
    flags, rest = {}, args
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, value = word[2:].partition("=")
        flags[name], rest = value, rest.lstrip()
    return flags, rest


def words(args):
    if args.startswith("["):
        return json.loads(args)
    return args.split()


def stages(dockerfile):
    """The Dockerfile's stages: dicts with name, base and a list of (line, instruction, args)."""
    found = []
    for number, name, args in instructions(dockerfile.read_text()):
        if name == "FROM":
            parts = words(split_flags(args)[1])
            alias = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            found.append({"name": alias, "base": parts[0], "line": number, "steps": []})
        elif not found:
            if name != "ARG":
                raise Failure(f"Dockerfile:{number}: {name} before the first FROM")
        else:
            found[-1]["steps"].append((number, name, args))
    if not found:
        raise Failure("Dockerfile: no FROM")
    return found


def final_copies(all_stages):
    """The build stage the final stage copies from, and those (line, source, dest) copies."""
    final, copies, sources = all_stages[-1], [], set()
    for number, name, args in final["steps"]:
        flags, rest = split_flags(args)
        if name == "COPY" and "from" in flags:
            *srcs, dest = words(rest)
            sources.add(flags["from"])
            copies.extend((number, src, dest) for src in srcs)
    if len(sources) != 1:
        raise Failure("Dockerfile: the final stage must COPY --from exactly one build stage")
    (source,) = sources
    build = [s for i, s in enumerate(all_stages[:-1]) if source in (s["name"], str(i))]
    if not build:
        raise Failure(f"Dockerfile: COPY --from={source} names no earlier stage")
    return build[0], copies


# --- the replay -------------------------------------------------------------------------------


class Replay:
    def __init__(self, context, root):
        self.context, self.root, self.workdir = context, root, "/"
        self.patterns = read_dockerignore(context / ".dockerignore")
        self.files, self.dirs = list_context(context, self.patterns)

    def host(self, image_path):
        return self.root / image_path.lstrip("/")

    def workdir_to(self, number, args):
        if "$" in args:
            raise Failure(f"Dockerfile:{number}: variables in WORKDIR are not supported")
        self.workdir = go_clean(posixpath.join(self.workdir, args))
        self.host(self.workdir).mkdir(parents=True, exist_ok=True)

    def sources(self, number, src):
        rel = go_clean(src.lstrip("/") or ".")
        if rel == ".." or rel.startswith("../"):
            raise Failure(f"Dockerfile:{number}: COPY {src}: outside the build context")
        if not any(c in rel for c in "*?["):
            if rel in self.files or rel in self.dirs:
                return [rel]
            why = excluded_by(self.patterns, rel) if (self.context / rel).exists() else None
            reason = f"excluded by .dockerignore pattern `{why}`" if why else "no such file"
            raise Failure(f"Dockerfile:{number}: COPY {src}: not in the build context ({reason})")
        segments = rel.split("/")
        hits = sorted(
            p
            for p in self.files | self.dirs - {"."}
            if len(p.split("/")) == len(segments)
            and all(fnmatchcase(a, b) for a, b in zip(p.split("/"), segments, strict=True))
        )
        if not hits:
            raise Failure(f"Dockerfile:{number}: COPY {src}: matches nothing in the build context")
        return hits

    def copy(self, number, args):
        flags, rest = split_flags(args)
        unsupported = set(flags) - {"chown", "chmod", "link"}  # ownership does not matter here
        if unsupported:
            raise Failure(f"Dockerfile:{number}: COPY --{min(unsupported)} is not supported")
        *srcs, dest = words(rest)
        target = go_clean(posixpath.join(self.workdir, dest))
        into_dir = dest.endswith("/") or dest in (".", "..") or self.host(target).is_dir()
        picked = [p for src in srcs for p in self.sources(number, src)]
        if len(picked) > 1 and not into_dir:
            raise Failure(f"Dockerfile:{number}: COPY of several sources needs a dest ending in /")
        for rel in picked:
            if rel in self.dirs:  # a directory's contents, not the directory itself
                for f in self.files_under(rel):
                    tail = f if rel == "." else f[len(rel) + 1 :]
                    self.put(f, posixpath.join(target, tail))
            else:
                self.put(rel, f"{target}/{posixpath.basename(rel)}" if into_dir else target)

    def files_under(self, rel):
        if rel not in self.dirs:
            return [rel]
        return [f for f in self.files if rel == "." or f.startswith(rel + "/")]

    def put(self, rel, image_path):
        dest = self.host(image_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # copy2 keeps the mtime, as COPY does: the Dockerfile's `touch` step depends on it.
        shutil.copy2(self.context / rel, dest, follow_symlinks=False)

    def run(self, number, args, env):
        flags, rest = split_flags(args)
        if flags:
            raise Failure(f"Dockerfile:{number}: RUN --{min(flags)} is not supported")
        if re.search(r"<<-?\s*['\"]?\w", rest):
            raise Failure(f"Dockerfile:{number}: heredocs in RUN are not supported")
        # The replay runs on this machine, not in a container: no absolute paths.
        if re.search(r"(^|[\s;&|=(<>'\"])/(?!dev/null\b)", rest):
            raise Failure(f"Dockerfile:{number}: RUN with an absolute path is not replayed here")
        argv = words(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
        cwd = self.host(self.workdir)
        print(f"{PREFIX}: Dockerfile:{number}: RUN {shorten(rest)}", flush=True)
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
        output = []
        for line in proc.stderr:  # shown as it comes: the first run compiles for minutes
            sys.stderr.write(line)
            output.append(line.strip())
        if proc.wait() != 0:
            where = f"Dockerfile:{number}: RUN failed"
            if re.search(r"\bcargo\b", rest):
                check_workspace(where, cwd)  # a clearer line than cargo's, where it can tell
            raise Failure(f"{where}: {first_error(output, proc)}")


def first_error(lines, proc):
    """Cargo's or rustc's first error line, with the `--> file:line` that follows it."""
    for i, line in enumerate(lines):
        if line.startswith("error"):
            where = [x for x in lines[i + 1 : i + 4] if x.startswith("-->")]
            return " ".join([line, *where[:1]])
    return f"exit status {proc.returncode}"


def shorten(text):
    text = " ".join(text.split())
    return text if len(text) <= 90 else text[:87] + "..."


TARGET_DIRS = {"bin": "src/bin", "bench": "benches", "test": "tests", "example": "examples"}


def check_workspace(where, cwd):
    """After cargo failed: a missing member manifest or declared target, which cargo loads for
    every member, whichever it builds."""
    manifest = cwd / "Cargo.toml"
    if not manifest.is_file():
        raise Failure(f"{where}: there is no Cargo.toml in the WORKDIR")
    members = tomllib.loads(manifest.read_text()).get("workspace", {}).get("members", [])
    paths = [p for m in members for p in (sorted(cwd.glob(m)) if "*" in m else [cwd / m])]
    for path in paths:  # cargo reads every manifest before it looks for any target
        rel = path.relative_to(cwd).as_posix()
        if not (path / "Cargo.toml").is_file():
            raise Failure(f"{where}: workspace member {rel} has no {rel}/Cargo.toml")
    for path in paths:
        check_targets(where, path.relative_to(cwd).as_posix(), path)


def check_targets(where, rel, path):
    package = tomllib.loads((path / "Cargo.toml").read_text())
    name = package.get("package", {}).get("name", rel)
    declared = [("lib", package["lib"])] if "lib" in package else []
    declared += [(kind, t) for kind in TARGET_DIRS for t in package.get(kind, [])]
    for kind, target in declared:
        tname = target.get("name", name)
        if "path" in target:
            candidates = [target["path"]]
        elif kind == "lib":
            candidates = ["src/lib.rs"]
        else:
            base = TARGET_DIRS[kind]
            candidates = [f"{base}/{tname}.rs", f"{base}/{tname}/main.rs"]
            candidates += ["src/main.rs"] if kind == "bin" and tname == name else []
        if not any((path / c).is_file() for c in candidates):
            missing = f"{rel}/{candidates[0]}"
            raise Failure(f"{where}: {missing} ({kind} target {tname} of {rel}) does not exist")
    if not declared and not any((path / f).exists() for f in ("src/lib.rs", "src/main.rs")):
        raise Failure(f"{where}: workspace member {rel} has no src/lib.rs or src/main.rs")


def replay(dockerfile, context, root, target_dir):
    all_stages = stages(dockerfile)
    build, _ = final_copies(all_stages)
    if any(build["base"] == s["name"] for s in all_stages):
        raise Failure(f"Dockerfile:{build['line']}: a stage built on a stage is not supported")
    toolchain = re.match(r"rust:(\d+\.\d+)", build["base"])
    rustc = tool_output(["rustc", "-vV"])
    if toolchain and not rustc.startswith(f"rustc {toolchain.group(1)}."):
        here = rustc.splitlines()[0]
        print(f"{PREFIX}: warning: the image uses {build['base']}, this machine {here}")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    state = Replay(context, root)
    drop = ("RUSTFLAGS", "RUSTDOCFLAGS", "CARGO_ENCODED_RUSTFLAGS")
    keep = ("CARGO_HOME", "CARGO_TARGET_DIR")  # where crates are cached and built, not how
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in drop and (not k.startswith("CARGO_") or k in keep)
    }
    key = cache_key(build, state, rustc)
    built = [target_dir / rel for rel, _ in artifact_paths(build, all_stages)]
    stamp = target_dir / "image-check.stamp"
    cached = os.environ.get("IMAGE_CHECK_NO_CACHE") != "1" and stamp_matches(stamp, key, built)
    for number, name, args in build["steps"]:
        if name == "WORKDIR":
            state.workdir_to(number, args)
        elif name == "COPY":
            state.copy(number, args)
        elif name == "RUN" and cached:
            print(f"{PREFIX}: Dockerfile:{number}: RUN CACHED (IMAGE_CHECK_NO_CACHE=1 reruns it)")
        elif name == "RUN":
            state.run(number, args, env)
        elif name not in ("LABEL",):
            raise Failure(f"Dockerfile:{number}: {name} in the build stage is not supported")
    if not cached:
        stamp.write_text(json.dumps({"key": key, "built": [digest(p) for p in built]}))
    print(f"{PREFIX}: build stage replayed in {state.host(state.workdir)}")


def tool_output(argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def cache_key(build, state, rustc):
    """What Docker keys the stage's layers on (each step's text, the content of the files its
    COPY lines take), plus the toolchain and this replay: equal keys, equal binaries."""
    h = hashlib.sha256()
    code = [
        Path(__file__).with_name(n).read_text() for n in ("image_context.py", "dockerignore.py")
    ]
    for text in (*code, rustc, tool_output(["cargo", "-V"])):
        h.update(text.encode())
    for number, name, args in build["steps"]:
        h.update(f"\0{name} {args}\0".encode())
        if name != "COPY":
            continue
        for src in words(split_flags(args)[1])[:-1]:
            for rel in state.sources(number, src):
                for f in sorted(state.files_under(rel)):
                    mode = os.lstat(state.context / f).st_mode
                    h.update(f"{f}\0{mode:o}\0".encode())
                    h.update(hashlib.sha256((state.context / f).read_bytes()).digest())
    return h.hexdigest()


def stamp_matches(stamp, key, built):
    """The last replay had this key and its binaries are still the ones it built."""
    try:
        last = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return last.get("key") == key and last.get("built") == [digest(p) for p in built]


def artifact_paths(build, all_stages):
    """(path under cargo's target dir, dest) for each file the final stage copies."""
    _, copies = final_copies(all_stages)
    workdir = "/"
    for _, name, args in build["steps"]:
        if name == "WORKDIR":
            workdir = go_clean(posixpath.join(workdir, args))
    # The base image sets no CARGO_TARGET_DIR, so cargo builds into WORKDIR/target.
    target = posixpath.join(workdir, "target") + "/"
    paths = []
    for number, src, dest in copies:
        path = go_clean(posixpath.join(workdir, src))
        if not path.startswith(target):
            raise Failure(f"Dockerfile:{number}: COPY --from {path} is not under {target}")
        paths.append((path[len(target) :], dest))
    return paths


def main(argv):
    if len(argv) == 5 and argv[1] == "replay":
        if "CARGO_TARGET_DIR" not in os.environ:
            raise Failure("replay builds into $CARGO_TARGET_DIR, which is not set")
        target_dir = Path(os.environ["CARGO_TARGET_DIR"])
        replay(Path(argv[2]), Path(argv[3]).resolve(), Path(argv[4]).resolve(), target_dir)
    elif len(argv) == 3 and argv[1] == "artifacts":
        all_stages = stages(Path(argv[2]))
        build, _ = final_copies(all_stages)
        for rel, dest in artifact_paths(build, all_stages):
            print(f"{rel}\t{dest}")
    else:
        raise Failure(
            "usage: image_context.py (replay DOCKERFILE CONTEXT ROOT | artifacts DOCKERFILE)"
        )


if __name__ == "__main__":
    try:
        main(sys.argv)
    except Failure as failure:
        print(f"{PREFIX}: FAIL: {failure}", file=sys.stderr)
        sys.exit(1)
