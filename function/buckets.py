"""Bucket names: S3's rules, and INPUT_BUCKET / OUTPUT_BUCKET templates rendered per job.

A bucket setting may be a template (`{id}`: a bucket named after the song). At start (function/config.py) a
template must be able to give a valid name: its own text may only hold what a bucket name may, and every value of
its other placeholders (each allowed model, each format) must fit. Whether one job's id fits (ids may hold capitals
and '_', which no bucket name may) is known only per job: `render_bucket` then refuses the job for good
(InvalidJob), as a message that names a bucket outside INPUT_BUCKETS is refused.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Iterable, Mapping

from function.errors import InvalidJob

# S3's general-purpose bucket rules (docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html).
NAME_CHARS = re.compile(r"[a-z0-9.-]+")
RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# Ids a template is tried with at start: one that is short, one that is long enough for a three-character minimum.
SAMPLE_IDS = ("a", "abc")


def bucket_name_problem(name: str) -> str | None:
    """Why `name` is not a valid S3 bucket name, or None when it is."""
    if not 3 <= len(name) <= 63:
        return f"is {len(name)} characters; a bucket name has 3 to 63"
    if NAME_CHARS.fullmatch(name) is None:
        return "may only hold lowercase letters, digits, '.' and '-'"
    if not (name[0].isalnum() and name[-1].isalnum()):
        return "must begin and end with a letter or digit"
    if ".." in name or ".-" in name or "-." in name:
        return "must not hold '..', '.-' or '-.'"
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        pass
    else:
        return "must not be an IP address"
    if name.startswith(RESERVED_PREFIXES) or name.endswith(RESERVED_SUFFIXES):
        return "uses a prefix or suffix S3 reserves"
    return None


def placeholders(template: str) -> set[str]:
    """The `{name}` placeholders of a template."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def check_bucket_template(name: str, template: str, values: Mapping[str, Iterable[str]]) -> str:
    """Raise ValueError naming `name` unless `template` gives a valid bucket name for some id and every combination
    of the `values` of its other placeholders (e.g. each allowed model); the caller has checked the placeholders."""
    used = placeholders(template)
    combos: list[dict[str, str]] = [{}]
    for field in sorted(used - {"id"}):
        combos = [{**combo, field: value} for combo in combos for value in values.get(field, ())]
    for combo in combos:
        problems = [bucket_name_problem(template.format(id=sample, **combo)) for sample in SAMPLE_IDS]
        if all(problems):
            example = template.format(id=SAMPLE_IDS[-1], **combo)
            given = "".join(f", {{{field}}}={value!r}" for field, value in combo.items())
            shown = f" (with {{id}}={SAMPLE_IDS[-1]!r}{given})" if used else ""
            raise ValueError(f"{name} {template!r} cannot be a bucket name: {example!r}{shown} {problems[-1]}")
    return template


def render_bucket(name: str, template: str, **values: str) -> str:
    """The bucket `template` names for one job; InvalidJob (permanent) when it is not a valid bucket name."""
    bucket = template.format(**{field: values[field] for field in placeholders(template)})
    problem = bucket_name_problem(bucket)
    if problem is not None:
        raise InvalidJob(f"{name} {template!r} gives bucket {bucket[:80]!r} for this job, which {problem}")
    return bucket
