"""The operator docs point at things that exist and name keys arvnode reads.

Why: an operator follows README.md and docs/*.md literally. A link to a file
that moved, a heading that was renamed, or a config key in
docs/configure.md's table that arvnode does not read (a typo, a key
removed) sends them into the weeds; so does a default in that table that
differs from the code's. arvnode.config keeps no list of known keys (it records
what it reads while reading), so a documented key is checked the way an
operator would meet it: set it in a minimal config and see that the loader
does not report it as unknown. The table is also checked the other way:
every key of the effective configuration (``arvnode config check``) is
documented.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from arvnode.config import ConfigError, config_from_string, mask_secrets, parse_duration, parse_size
from arvnode.keep.volumes.s3_params import IGNORED_KEYS, SUPPORTED_KEYS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURE = DOCS / "configure.md"
CLUSTER = "zzzzz"

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)

# What each <placeholder> of the table becomes in a test config.
VOLUME = "zzzzz-nyw5e-000000000000000"
REMOTE = "yyyyy"
URL = "http://127.0.0.1:25108/"
SUBSTITUTE = {
    "<uuid>": VOLUME, "<id>": REMOTE, "<url>": URL, "<param>": "host", "<name>": None,
}
# Maps whose keys are names the operator chooses (for the reverse check).
_ENTRY_MAPS = {
    "InternalURLs": "<url>", "RemoteClusters": "<id>", "Volumes": "<uuid>",
    "StorageClasses": "<name>", "Users": "<name>", "Connection": "<param>",
}


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def links(path: Path) -> list[str]:
    text = _CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)
    return _LINK.findall(text)


def table_rows(path: Path, first_header: str) -> list[list[str]]:
    """Cells of the rows of every table whose first header cell is ``first_header``."""
    rows: list[list[str]] = []
    in_table = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not in_table:
            in_table = cells[0] == first_header
            continue
        if set(cells[0]) <= set("-: "):
            continue
        rows.append(cells)
    return rows


def documented() -> list[tuple[str, str]]:
    """(key path, default cell) of every row of configure.md's key table."""
    out = []
    for cells in table_rows(CONFIGURE, "key"):
        m = re.fullmatch(r"`([^`]+)`", cells[0])
        assert m, f"key cell without a single `path`: {cells[0]!r}"
        out.append((m.group(1), cells[1]))
    return out


def concrete(path: str) -> list[str]:
    parts = []
    for part in path.split("."):
        if part == "<name>":
            # A class, or a test-login user.
            part = "alice" if parts[-1:] == ["Users"] else "other"
        else:
            part = SUBSTITUTE.get(part) or part
        parts.append(part)
    return parts


def base_config() -> dict[str, Any]:
    """A valid config holding one entry of every user-named map."""
    return {
        "Clusters": {
            CLUSTER: {
                "SystemRootToken": "a" * 40,
                "Services": {
                    "Controller": {"InternalURLs": {"http://127.0.0.1:0/": {}}},
                    "Keepproxy": {"InternalURLs": {"http://127.0.0.1:0/": {}}},
                    "Keepstore": {"InternalURLs": {URL: {}}},
                },
                "Collections": {"BlobSigningKey": "b" * 40},
                "Login": {"Test": {"Users": {"alice": {"Password": "secret"}}}},
                "RemoteClusters": {REMOTE: {"Host": "yyyyy.example.org"}},
                "StorageClasses": {"default": {"Default": True}, "other": {}},
                "Volumes": {VOLUME: {"Driver": "Directory",
                                     "DriverParameters": {"Root": "/tmp/arvnode-test-docs"}}},
            }
        }
    }


def with_value(parts: list[str], value: Any) -> dict[str, Any]:
    data = base_config()
    node = data["Clusters"][CLUSTER]
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
    return data


def dotted(parts: list[str]) -> str:
    return ".".join(["Clusters", CLUSTER, *parts])


def lookup(data: Any, parts: list[str]) -> tuple[bool, Any]:
    for part in parts:
        if not isinstance(data, dict) or part not in data:
            return False, None
        data = data[part]
    return True, data


def same(default: str, effective: Any) -> bool:
    """Does the table's `default` say what the effective config holds?"""
    if isinstance(effective, bool):
        return yaml.safe_load(default) is effective
    if isinstance(effective, int):
        return parse_size(yaml.safe_load(default)) == effective
    if isinstance(effective, str) and effective and re.fullmatch(r"[0-9.hmsuµn]+", effective):
        try:
            return parse_duration(default) == parse_duration(effective)
        except ValueError:
            pass
    return yaml.safe_load(default) == effective if default else effective == ""


class LinkTests(SynchronousTestCase):
    def test_relative_links_resolve(self) -> None:
        """Every relative link in README.md and docs/*.md names an existing
        file, and a #fragment names a heading of that file."""
        checked = 0
        for doc in doc_files():
            for target in links(doc):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue  # http:, https:, mailto:
                path_part, _, fragment = target.partition("#")
                dest = (doc.parent / path_part).resolve() if path_part else doc
                self.assertTrue(dest.exists(), f"{doc.name}: link to missing {target}")
                if fragment and dest.suffix == ".md":
                    self.assertIn(fragment, anchors(dest), f"{doc.name}: no heading for {target}")
                checked += 1
        self.assertGreater(checked, 10)

    def test_readme_lists_the_docs(self) -> None:
        """The README's Documentation list reaches every page of docs/."""
        targets = set(links(ROOT / "README.md"))
        for page in sorted(DOCS.glob("*.md")):
            self.assertIn(f"docs/{page.name}", targets)
        self.assertIn("bench/README.md", targets)


class ConfigureTableTests(SynchronousTestCase):
    def test_table_is_not_empty(self) -> None:
        self.assertGreater(len(documented()), 50)

    def test_every_documented_key_is_read(self) -> None:
        """Set in a minimal config, each key is used, not reported unknown."""
        for path, default in documented():
            parts = concrete(path)
            name = dotted(parts)
            candidates: list[Any] = []
            m = re.match(r"`([^`]*)`", default)
            if m:
                candidates.append(yaml.safe_load(m.group(1)) if m.group(1) else "")
            candidates += [True, 1, "1s", "c" * 40, "http://127.0.0.1:1/", {}, "x"]
            problems: list[str] = []
            for value in candidates:
                try:
                    config = config_from_string(yaml.safe_dump(with_value(parts, value)))
                except ConfigError as e:
                    problems += e.problems
                    continue
                self.assertNotIn(name, config.unknown_keys, f"{path} is not read by arvnode")
                break
            else:
                # Every value was refused: the key is read (validated) unless
                # the refusal says it is unknown (the ArvNode section).
                mine = [p for p in problems if p.startswith(name + ":")]
                self.assertTrue(mine, f"{path}: refused for other reasons: {problems[:3]}")
                self.assertFalse([p for p in mine if "an unknown key" in p], f"{path} is unknown: {mine[0]}")

    def test_defaults_match_the_code(self) -> None:
        """Each default written as `value` is what `config check` shows."""
        effective = mask_secrets(config_from_string(yaml.safe_dump(base_config())))
        cluster = effective["Clusters"][CLUSTER]
        compared = 0
        for path, default in documented():
            m = re.fullmatch(r"`([^`]*)`", default)
            if not m:
                continue
            found, value = lookup(cluster, concrete(path))
            if not found or (isinstance(value, dict) and value and m.group(1) == "{}"):
                continue  # an entry the base config fills in on purpose
            self.assertTrue(same(m.group(1), value), f"{path}: doc says {default}, code {value!r}")
            compared += 1
        self.assertGreater(compared, 40)

    def test_every_effective_key_is_documented(self) -> None:
        """Nothing `arvnode config check` prints is missing from the table."""
        paths = {p for p, _ in documented()}
        effective = mask_secrets(config_from_string(yaml.safe_dump(base_config())))

        def leaves(data: Any, prefix: list[str]) -> list[str]:
            if not isinstance(data, dict) or not data:
                return [".".join(prefix)]
            out = []
            for key, value in data.items():
                name = _ENTRY_MAPS.get(prefix[-1]) if prefix else None
                if prefix[-1:] == ["StorageClasses"] and len(prefix) > 1:
                    name = None  # a volume's classes: a leaf map
                if prefix == ["Users"]:
                    name = None  # the Users section, not Login.Test.Users
                out += leaves(value, prefix + [name or key])
            return out

        for leaf in leaves(effective["Clusters"][CLUSTER], []):
            covered = any(
                leaf == p or leaf.startswith(p + ".") or p.startswith(leaf + ".") for p in paths
            )
            self.assertTrue(covered, f"{leaf} is not in docs/configure.md")

    def test_s3_parameters(self) -> None:
        """The S3 table lists exactly the parameters the driver takes."""
        names = set()
        for cells in table_rows(CONFIGURE, "parameter"):
            names.add(cells[0].strip("`"))
        names.discard("Root")  # the Directory table
        self.assertEqual(names, set(SUPPORTED_KEYS))
        text = CONFIGURE.read_text(encoding="utf-8")
        for key in IGNORED_KEYS:
            self.assertIn(f"`{key}`", text)


def _flat(path: Path) -> str:
    """A doc's text with line breaks and runs of spaces made one space, so a
    message wrapped across lines of the markdown still matches."""
    return re.sub(r"\s+", " ", path.read_text(encoding="utf-8"))


class StartupMessageTests(SynchronousTestCase):
    """What troubleshoot.md and install.md quote of a failed start is what the
    node prints. (They used to quote a `TLSConfigError` traceback and a
    "no URL to listen on" line that the code no longer produced.)"""

    def test_startup_problems_are_quoted(self) -> None:
        from arvnode.config import startup_problems

        data = base_config()
        cluster = data["Clusters"][CLUSTER]
        cluster["Services"]["Controller"]["InternalURLs"] = {"https://127.0.0.1:0/": {}}
        del cluster["Services"]["Keepproxy"]
        cluster["Volumes"][VOLUME]["Driver"] = "Azure"
        problems = startup_problems(config_from_string(yaml.safe_dump(data)))
        self.assertEqual(len(problems), 3, problems)
        doc = _flat(DOCS / "troubleshoot.md")
        prefix = f"Clusters.{CLUSTER}."
        for problem in problems:
            self.assertTrue(problem.startswith(prefix), problem)
            key, _, rest = problem[len(prefix):].partition(": ")
            # The doc shows the key's last part and the message up to its
            # first clause (the volume's doc line elides the driver name).
            head = rest.split('"')[0] if key.endswith("Driver") else rest.split(", e.g.")[0]
            self.assertIn(f"{key.rsplit('.', 1)[-1]}: {head}", doc.replace("<uuid>.", ""),
                          f"troubleshoot.md does not quote: {problem}")

    def test_tls_file_errors_are_quoted(self) -> None:
        from arvnode.tls import TLSConfigError, load_server_options

        missing = self.mktemp()
        with self.assertRaises(TLSConfigError) as caught:
            load_server_options(missing, missing)
        message = str(caught.exception)
        self.assertTrue(message.startswith("TLS.Certificate: cannot read "), message)
        for doc in ("troubleshoot.md", "install.md"):
            text = _flat(DOCS / doc)
            self.assertIn("arvnode: cannot start a node: TLS.Certificate", text, doc)
            self.assertNotIn("TLSConfigError", text, f"{doc} quotes the old traceback")
        self.assertIn("TLS.Certificate: cannot read '...'", _flat(DOCS / "troubleshoot.md"))
