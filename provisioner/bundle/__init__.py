"""Bundles: everything an offline machine needs to run `provision up`, made on a connected one.

    target.py    the target's Python and wheel platform (uv's --python-platform, packaging's tags)
    resolve.py   uv pip compile for the target; each package's wheel; the by-path pylock.toml
    tool.py      provision's own wheel and dependencies
    plan.py      plan_bundle: what the bundle will hold, what is already there (changes nothing)
    fetch.py     one file by URL: copy or download into .part, resume, sha256
    create.py    apply: fetch, locks, manifest, tar
    manifest.py  manifest.json: every file's path, size and sha256; the body checksum
    verify.py    verify / list a bundle folder or tar
    install.py   the offline side: open + verify, env from the bundle's lock, the model folder
"""
