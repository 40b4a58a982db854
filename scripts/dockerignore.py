"""The build context as Docker sends it: .dockerignore read and matched as Docker does.

This follows github.com/moby/patternmatcher (Docker's matcher) for what sluice's .dockerignore
uses and a bit more: `#` comments in the first column, leading `/` and trailing `/` dropped
(filepath.Clean), `*` and `?` within one path segment, `**` across segments, `[...]` classes,
`\\` escapes, and `!` exceptions. A pattern matches a path from the context root (not at any
depth, unlike .gitignore) or any of its parent directories, and the last matching pattern wins.
Standard library only; scripts/image_context.py uses it.
"""

import os
import posixpath
import re


def go_clean(path):
    """Go's filepath.Clean, which Docker applies to patterns and paths."""
    cleaned = posixpath.normpath(path) if path else "."
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def read_dockerignore(path):
    patterns = []
    if not path.exists():
        return patterns
    for raw in path.read_text(encoding="utf-8-sig").splitlines():
        if raw.startswith("#"):  # a comment only when `#` is the very first character
            continue
        text = raw.strip()
        if not text:
            continue
        exclusion = text.startswith("!")
        text = go_clean(text[1:].strip() if exclusion else text)
        if len(text) > 1 and text.startswith("/"):
            text = text[1:]
        patterns.append((exclusion, text, pattern_regex(text)))
    return patterns


def pattern_regex(pattern):
    """The regular expression patternmatcher compiles: `*` and `?` stop at `/`, `**` does not."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch in "[]":
            out += ch  # character classes pass through, as in Go's filepath.Match
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$", re.S)


def excluded_by(patterns, rel):
    """The pattern that excludes `rel` (a file, or a directory through its parents), or None.

    The last pattern matching the path or one of its parent directories decides."""
    parents = rel.split("/")[:-1]
    decider = None
    for exclusion, text, regex in patterns:
        if exclusion != (decider is not None):  # only patterns that could change the answer
            continue
        hit = regex.match(rel) or any(
            regex.match("/".join(parents[: i + 1])) for i in range(len(parents))
        )
        if hit:
            decider = None if exclusion else text
    return decider


def list_context(top, patterns):
    """Files and directories Docker sends as the build context, relative to `top`."""
    files, dirs = set(), {"."}
    for here, subdirs, names in os.walk(top):
        base = os.path.relpath(here, top)
        keep = []
        for name in subdirs:
            rel = name if base == "." else f"{base}/{name}"
            if excluded_by(patterns, rel) is None:
                dirs.add(rel)
                keep.append(name)
            elif any(ex and (text + "/").startswith(rel + "/") for ex, text, _ in patterns):
                keep.append(name)  # Docker descends only where an exception may re-include
        subdirs[:] = keep
        for name in names:
            rel = name if base == "." else f"{base}/{name}"
            if excluded_by(patterns, rel) is None:
                files.add(rel)
                parent = posixpath.dirname(rel)
                while parent and parent not in dirs:
                    dirs.add(parent)
                    parent = posixpath.dirname(parent)
    return files, dirs
