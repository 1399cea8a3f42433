#!/usr/bin/env python3
"""The deploy/ examples read only metrics Formica serves.

deploy/grafana/formica-dashboard.json parses, every panel has queries, and
every formica_* metric its queries, the Prometheus rules
(deploy/prometheus/formica-rules.yml, also through `promtool check rules`)
and the HPA's Prometheus adapter rule (deploy/k8s/provider-hpa.yaml) name is
one docs/metrics.md lists. The HPA scales on the metric the adapter makes.

The replicated groups' manifests (deploy/k8s/dtsd-group.yaml and
dmsd-group.yaml) parse and hang together: an odd number of replicas started
in parallel with their own volumes and a PodDisruptionBudget of one; the
ConfigMap's raft.peers lists exactly that many members, member N+1 named by
pod N's DNS name under the headless Service at the raft port the container
exposes; the command, run by sh for each pod name, gives the member id of
that pod's peers entry and advertises the pod IP; the daemon's config sets
only keys its example config (deploy/DAEMON.yaml) or the raft key reference
(docs/ha.md) show, with its data under the pod's volume. The daemons have no
config-check mode, so the config itself is checked here, not loaded.
Usage: check_deploy.py SOURCE_DIR
"""
import json
import os
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


def leaf_keys(tree, prefix=""):
    """The dotted paths of a YAML mapping's leaves ("server.listen")."""
    keys = set()
    for k, v in tree.items():
        path = f"{prefix}{k}"
        keys |= leaf_keys(v, path + ".") if isinstance(v, dict) else {path}
    return keys


def raft_keys(root):
    """The raft.* keys docs/ha.md's key reference shows."""
    text = open(f"{root}/docs/ha.md").read()
    block = text.split("## Configuration: the `raft.*` keys", 1)[1]
    block = block.split("```yaml", 1)[1].split("```", 1)[0]
    return leaf_keys(yaml.safe_load(block))


def one(docs, kind, where, errors, name=None):
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    if len(found) != 1:
        errors.append(f"{where}: want one {kind}{f' {name}' if name else ''}, found {len(found)}")
        return None
    return found[0]


def under(path, mount):
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def check_group(root, daemon, errors):
    """Checks deploy/k8s/DAEMON-group.yaml; returns how many members it checked."""
    where = f"deploy/k8s/{daemon}-group.yaml"
    docs = [d for d in yaml.safe_load_all(open(f"{root}/{where}")) if d]
    sts = one(docs, "StatefulSet", where, errors)
    cm = one(docs, "ConfigMap", where, errors)
    pdb = one(docs, "PodDisruptionBudget", where, errors)
    if not (sts and cm and pdb):
        return 0
    spec = sts["spec"]
    name = sts["metadata"]["name"]
    svc = one(docs, "Service", where, errors, spec["serviceName"])
    if not svc:
        return 0
    replicas = spec["replicas"]
    if replicas < 3 or replicas % 2 == 0:
        errors.append(f"{where}: {replicas} replicas; a group needs an odd number, 3 or more")
    if spec.get("podManagementPolicy") != "Parallel":
        errors.append(f"{where}: podManagementPolicy is not Parallel: each member would wait "
                      "for the one before it to be ready instead of starting with the group")
    labels = spec["template"]["metadata"]["labels"]
    for what, selector in (("StatefulSet", spec["selector"]["matchLabels"]),
                           ("Service", svc["spec"].get("selector", {})),
                           ("PodDisruptionBudget", pdb["spec"]["selector"]["matchLabels"])):
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            errors.append(f"{where}: the {what}'s selector {selector} does not select the pods "
                          f"({labels})")
    if pdb["spec"].get("maxUnavailable") != 1:
        errors.append(f"{where}: the PodDisruptionBudget's maxUnavailable is not 1")
    if svc["spec"].get("clusterIP") != "None" or not svc["spec"].get("publishNotReadyAddresses"):
        errors.append(f"{where}: Service {svc['metadata']['name']} is not headless with "
                      "publishNotReadyAddresses: members must resolve each other before ready")

    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    raft_port, grpc_port = ports.get("raft"), ports.get("grpc")
    svc_ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    if raft_port is None or svc_ports.get("raft") != raft_port:
        errors.append(f"{where}: the headless Service's raft port {svc_ports.get('raft')} is not "
                      f"the container's ({raft_port})")
    # dmsd's followers refuse the gRPC health check with the rest of the API,
    # so its members' readiness is a TCP connect to the API port.
    kind = "tcpSocket" if daemon == "dmsd" else "grpc"
    probe = container.get("readinessProbe", {}).get(kind, {}).get("port")
    if grpc_port is None or probe != grpc_port:
        errors.append(f"{where}: the readiness probe ({kind} {probe}) does not ask the API port "
                      f"({grpc_port})")

    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
    data_mounts = [mounts[c] for c in claims if c in mounts]
    if not data_mounts:
        errors.append(f"{where}: no volumeClaimTemplate is mounted: each member needs its own disk")
    config_volume = next((v["name"] for v in pod.get("volumes", [])
                          if v.get("configMap", {}).get("name") == cm["metadata"]["name"]), None)
    config_path = f"{mounts.get(config_volume)}/{daemon}.yaml"

    config = yaml.safe_load(cm["data"][f"{daemon}.yaml"])
    known = leaf_keys(yaml.safe_load(open(f"{root}/deploy/{daemon}.yaml"))) | raft_keys(root)
    for key in sorted(leaf_keys(config) - known):
        errors.append(f"{where}: {daemon}'s config sets {key}, a key neither deploy/{daemon}.yaml "
                      "nor docs/ha.md shows")
    raft = config.get("raft", {})
    want = [f"{i + 1}@{name}-{i}.{svc['metadata']['name']}:{raft_port}" for i in range(replicas)]
    if raft.get("peers") != want:
        errors.append(f"{where}: raft.peers is {raft.get('peers')}, want {want}")
    if raft.get("listen") != f"0.0.0.0:{raft_port}":
        errors.append(f"{where}: raft.listen is {raft.get('listen')}, want 0.0.0.0:{raft_port}")
    if "node_id" in raft:
        errors.append(f"{where}: raft.node_id is in the ConfigMap; each pod takes it from its "
                      "ordinal")
    if config.get("server", {}).get("listen") != f"0.0.0.0:{grpc_port}":
        errors.append(f"{where}: server.listen is not 0.0.0.0:{grpc_port}, the API port")
    for key, path in (("storage.data_dir", config.get("storage", {}).get("data_dir")),
                      ("raft.data_dir", raft.get("data_dir"))):
        if not path or not any(under(path, m) for m in data_mounts):
            errors.append(f"{where}: {key} {path} is not on the pod's volume {data_mounts}")

    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
           for e in container.get("env", [])}
    if env.get("POD_NAME") != "metadata.name" or env.get("POD_IP") != "status.podIP":
        errors.append(f"{where}: POD_NAME and POD_IP do not come from the pod ({env})")
    command = container["command"]
    binary = f"/opt/formica/bin/{daemon}"
    if command[:2] != ["sh", "-c"] or f"exec {binary} " not in command[2]:
        errors.append(f"{where}: the command is not `sh -c 'exec {binary} ...'`")
        return 0
    script = command[2].replace(f"exec {binary} ", "printf '%s\\n' ")
    for i in range(replicas):
        pod_ip = f"10.244.0.{i + 10}"
        run = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                  "POD_NAME": f"{name}-{i}", "POD_IP": pod_ip})
        args = run.stdout.split("\n")
        ids = [a.split("=", 2)[2] for a in args if a.startswith("--set=raft.node_id=")]
        if run.returncode != 0 or ids != [str(i + 1)]:
            errors.append(f"{where}: pod {name}-{i} runs as raft.node_id {ids}, want {i + 1} "
                          f"({want[i]}) {run.stderr}")
        if f"--set=server.advertise_host={pod_ip}" not in args:
            errors.append(f"{where}: pod {name}-{i} does not advertise its pod IP: {args}")
        if f"--config={config_path}" not in args:
            errors.append(f"{where}: pod {name}-{i} does not read the ConfigMap at {config_path}")
    return replicas


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

    members = sum(check_group(root, daemon, errors) for daemon in ("dtsd", "dmsd"))

    for e in errors:
        print(f"FAILED  {e}")
    print(f"deploy examples: {len(exprs)} dashboard queries, {members} group members; "
          f"{0 if errors else 1} passed, "
          f"{1 if errors else 0} failed")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
