#!/usr/bin/python3
"""Parses Prometheus text exposition format from stdin with the official Python client's parser
(Debian's python3-prometheus-client) and prints one line per sample, `TYPE NAME{LABELS} VALUE`,
with the labels sorted; exits non-zero if the text does not parse or a sample's family is
untyped."""

import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    families = list(text_string_to_metric_families(text))
    if not families:
        sys.exit("no metric families")
    for family in families:
        if family.type in ("unknown", "untyped"):
            sys.exit(f"family {family.name} has no TYPE")
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            print(f"{family.type} {s.name}{{{labels}}} {s.value!r}")


if __name__ == "__main__":
    main()
