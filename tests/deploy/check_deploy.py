#!/usr/bin/env python3
"""The deploy/ examples read only metrics Formica serves.

deploy/grafana/formica-dashboard.json parses, every panel has queries, and
every formica_* metric its queries, the Prometheus rules
(deploy/prometheus/formica-rules.yml, also through `promtool check rules`)
and the HPA's Prometheus adapter rule (deploy/k8s/provider-hpa.yaml) name is
one docs/metrics.md lists. The HPA scales on the metric the adapter makes.
Usage: check_deploy.py SOURCE_DIR
"""
import json
import re
import subprocess
import sys

import yaml

METRIC = re.compile(r"\bformica_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_sum", "_count")


def served(root):
    text = open(f"{root}/docs/metrics.md").read()
    return set(re.findall(r"\| `(formica_[a-z0-9_]+)` \|", text))


def base(name):
    for s in SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def check_names(where, exprs, known, errors):
    for e in exprs:
        for name in METRIC.findall(e):
            if base(name) not in known:
                errors.append(f"{where}: {name} is not a metric docs/metrics.md lists")


def main(root):
    errors = []
    known = served(root)
    if len(known) < 10:
        errors.append(f"docs/metrics.md lists only {len(known)} metrics: its tables moved?")

    dash = json.load(open(f"{root}/deploy/grafana/formica-dashboard.json"))
    exprs = []
    for p in dash.get("panels", []):
        targets = [t.get("expr", "") for t in p.get("targets", [])]
        if not targets or not all(targets):
            errors.append(f"dashboard panel '{p.get('title')}' has no query")
        exprs += targets
    check_names("deploy/grafana/formica-dashboard.json", exprs, known, errors)

    rules_path = f"{root}/deploy/prometheus/formica-rules.yml"
    r = subprocess.run(["promtool", "check", "rules", rules_path], capture_output=True, text=True)
    if r.returncode != 0:
        errors.append(f"promtool check rules: {r.stdout}{r.stderr}")
    rules = yaml.safe_load(open(rules_path))
    check_names(rules_path, [x["expr"] for g in rules["groups"] for x in g["rules"]], known, errors)

    docs = list(yaml.safe_load_all(open(f"{root}/deploy/k8s/provider-hpa.yaml")))
    adapter = next(d for d in docs if d and d["kind"] == "ConfigMap")
    adapter_rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    check_names("provider-hpa.yaml adapter rule", [x["seriesQuery"] for x in adapter_rules], known,
                errors)
    made = {x["name"]["as"] for x in adapter_rules}
    hpa = next(d for d in docs if d and d["kind"] == "HorizontalPodAutoscaler")
    for m in hpa["spec"]["metrics"]:
        name = m["pods"]["metric"]["name"]
        if name not in made:
            errors.append(f"the HPA scales on {name}, which the adapter does not make ({made})")

    for e in errors:
        print(f"FAILED  {e}")
    print(f"deploy examples: {len(exprs)} dashboard queries; {0 if errors else 1} passed, "
          f"{1 if errors else 0} failed")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
