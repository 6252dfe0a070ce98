#!/usr/bin/env python3
"""Policy checks for the rendered chat-relay manifests, beyond schema validity.

Usage: check_manifests.py RENDERED.yaml [--sidecar | --replicas] [--self-test]
       check_manifests.py --self-test BASE.yaml   (each mutation must be rejected)

Exit 1 with one line per problem.
"""
import copy
import sys

import yaml


def relay_containers(docs):
    for d in docs:
        if d.get("kind") in ("Deployment", "StatefulSet"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                if c["name"] == "chat-relay":
                    yield d, c


def check(docs, sidecar=False, replicas=False):
    problems = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    found = list(relay_containers(docs))
    if len(found) != 1:
        return [f"expected exactly one chat-relay container, found {len(found)}"]
    workload, c = found[0]
    spec = workload["spec"]
    pod = spec["template"]["spec"]
    env_names = {e["name"] for e in c.get("env", [])}
    if replicas:
        # Several replicas elect a leader through Postgres and share NATS JetStream.
        if (spec.get("replicas") or 1) < 2:
            problems.append("the replicas variant runs at least two relays")
        if "CHAT_RELAY_NATS_URL" not in env_names:
            problems.append("replicas need CHAT_RELAY_NATS_URL")
        nats = [d for d in by_kind.get("StatefulSet", []) if any(
            "-js" in (k.get("args") or []) for k in d["spec"]["template"]["spec"]["containers"])]
        if not nats or not nats[0]["spec"].get("volumeClaimTemplates"):
            problems.append("a NATS StatefulSet with JetStream (-js) and a volume is required")
        nats_labels = nats[0]["spec"]["template"]["metadata"].get("labels", {}) if nats else {}
        pdbs = by_kind.get("PodDisruptionBudget", [])
        if not any(nats_labels and all(nats_labels.get(k) == v for k, v in p["spec"]["selector"].get("matchLabels", {}).items())
                   for p in pdbs):
            problems.append("NATS needs its own PodDisruptionBudget")
        relay_labels = spec["template"]["metadata"].get("labels", {})
        relay_pdbs = [p for p in pdbs if all(relay_labels.get(k) == v for k, v in p["spec"]["selector"].get("matchLabels", {}).items())]
        if not relay_pdbs or (relay_pdbs[0]["spec"].get("minAvailable") or 0) < 1:
            problems.append("the relay's PodDisruptionBudget must keep at least one replica up")
    else:
        if spec.get("replicas") != 1:
            problems.append("one replica must own the replication slot (replicas: 1)")
        if workload["kind"] == "Deployment" and spec.get("strategy", {}).get("type") != "Recreate":
            problems.append("Deployment strategy must be Recreate so two relays never overlap on the slot")
    if pod.get("terminationGracePeriodSeconds", 30) < 15:
        problems.append("terminationGracePeriodSeconds must exceed the relay's drain (>= 15 s)")
    sc = c.get("securityContext", {})
    psc = pod.get("securityContext", {})
    if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        problems.append("runAsNonRoot must be true")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem must be true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation must be false")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        problems.append("all capabilities must be dropped")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        problems.append("liveness probe must be GET /healthz")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problems.append("readiness probe must be GET /readyz")
    res = c.get("resources", {})
    if not res.get("requests") or not res.get("limits", {}).get("memory"):
        problems.append("resource requests and a memory limit are required")
    env = {e["name"]: e for e in c.get("env", [])}
    for name in ("DATABASE_URL", "CHAT_RELAY_JWT_SECRET"):
        if "secretKeyRef" not in env.get(name, {}).get("valueFrom", {}):
            problems.append(f"{name} must come from a Secret")
    # A read-only root has no writable temp dir: large transactions spill to a volume.
    spill = env.get("CHAT_RELAY_SPILL_DIR", {}).get("value")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if not spill or spill not in mounts or "emptyDir" not in volumes.get(mounts[spill], {}):
        problems.append("CHAT_RELAY_SPILL_DIR must be an emptyDir volume mounted in the relay container")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    listen = env.get("CHAT_RELAY_LISTEN", {}).get("value", "")
    if ports.get("http") is None or not listen.endswith(f":{ports.get('http')}"):
        problems.append("CHAT_RELAY_LISTEN must listen on the container's http port")
    labels = spec["template"]["metadata"].get("labels", {})
    # The relay's Services (NATS has its own, in the replicas variant).
    services = [svc for svc in by_kind.get("Service", [])
                if svc["metadata"].get("labels", {}).get("app.kubernetes.io/name") != "nats"]
    if not services:
        problems.append("a Service is required")
    for svc in services:
        selector = svc["spec"].get("selector", {})
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"Service {svc['metadata']['name']} does not select the relay's pods")
        svc_ports = {p.get("name") for p in svc["spec"]["ports"]}
        for sm in by_kind.get("ServiceMonitor", []):
            match = sm["spec"]["selector"].get("matchLabels", {})
            if any(svc["metadata"].get("labels", {}).get(k) != v for k, v in match.items()):
                problems.append("ServiceMonitor does not select the Service")
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in svc_ports or ep.get("path") != "/metrics":
                    problems.append("ServiceMonitor endpoint must scrape the Service's http port at /metrics")
    if not by_kind.get("ServiceMonitor"):
        problems.append("a ServiceMonitor is required")
    if not sidecar:
        for kind in ("PodDisruptionBudget", "NetworkPolicy", "ServiceAccount"):
            if not by_kind.get(kind):
                problems.append(f"a {kind} is required")
        for np in by_kind.get("NetworkPolicy", []):
            if set(np["spec"].get("policyTypes", [])) != {"Ingress", "Egress"}:
                problems.append("NetworkPolicy must restrict both ingress and egress")
            egress_ports = {p["port"] for rule in np["spec"].get("egress", []) for p in rule.get("ports", [])}
            allowed = {5432, 53, 4222} if replicas else {5432, 53}
            if not egress_ports <= allowed:
                problems.append(f"egress must only reach Postgres (NATS) and DNS, not {sorted(egress_ports)}")
            if replicas and 4222 not in egress_ports:
                problems.append("replicas must be allowed to reach NATS (4222)")
    return problems


def replica_mutations(docs):
    def relay(ds):
        return next(relay_containers(ds))[1]

    def workload(ds):
        return next(relay_containers(ds))[0]

    def nats(ds):
        return next(d for d in ds if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "nats")

    yield "one replica", lambda ds: workload(ds)["spec"].__setitem__("replicas", 1)
    yield "no NATS URL", lambda ds: relay(ds).__setitem__("env", [e for e in relay(ds)["env"] if e["name"] != "CHAT_RELAY_NATS_URL"])
    yield "no JetStream", lambda ds: nats(ds)["spec"]["template"]["spec"]["containers"][0].__setitem__("args", [])
    yield "no NATS volume", lambda ds: nats(ds)["spec"].pop("volumeClaimTemplates")
    yield "no NATS budget", lambda ds: ds.remove(next(d for d in ds if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == "nats"))
    yield "NATS unreachable", lambda ds: next(d for d in ds if d["kind"] == "NetworkPolicy")["spec"].__setitem__(
        "egress", [r for r in next(d for d in ds if d["kind"] == "NetworkPolicy")["spec"]["egress"]
                   if all(p["port"] != 4222 for p in r.get("ports", []))])


def mutations(docs):
    def relay(ds):
        return next(relay_containers(ds))[1]

    def workload(ds):
        return next(relay_containers(ds))[0]

    yield "two replicas", lambda ds: workload(ds)["spec"].__setitem__("replicas", 2)
    yield "rolling update", lambda ds: workload(ds)["spec"].__setitem__("strategy", {"type": "RollingUpdate"})
    yield "writable root", lambda ds: relay(ds)["securityContext"].__setitem__("readOnlyRootFilesystem", False)
    yield "privilege escalation", lambda ds: relay(ds)["securityContext"].__setitem__("allowPrivilegeEscalation", True)
    yield "capabilities kept", lambda ds: relay(ds)["securityContext"].__setitem__("capabilities", {})
    yield "wrong readiness", lambda ds: relay(ds)["readinessProbe"]["httpGet"].__setitem__("path", "/healthz")
    yield "secret inline", lambda ds: relay(ds)["env"].__setitem__(
        next(i for i, e in enumerate(relay(ds)["env"]) if e["name"] == "DATABASE_URL"), {"name": "DATABASE_URL", "value": "postgres://x"})
    yield "service misses pods", lambda ds: next(d for d in ds if d["kind"] == "Service")["spec"].__setitem__("selector", {"app": "other"})
    yield "monitor wrong port", lambda ds: next(d for d in ds if d["kind"] == "ServiceMonitor")["spec"]["endpoints"][0].__setitem__("port", "metrics")
    yield "no spill volume", lambda ds: relay(ds).__setitem__("volumeMounts", [])
    yield "open egress", lambda ds: next(d for d in ds if d["kind"] == "NetworkPolicy")["spec"]["egress"].append({"ports": [{"port": 443}]})


def main():
    args = sys.argv[1:]
    self_test = "--self-test" in args
    sidecar = "--sidecar" in args
    replicas = "--replicas" in args
    path = [a for a in args if not a.startswith("--")][0]
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    if self_test:
        failed = False
        if check(docs, replicas=replicas):
            print("self-test: the unmodified manifests must pass first")
            return 1
        for name, mutate in (replica_mutations(docs) if replicas else mutations(docs)):
            broken = copy.deepcopy(docs)
            mutate(broken)
            if not check(broken, replicas=replicas):
                print(f"self-test: mutation '{name}' was not rejected")
                failed = True
        print("self-test: every mutation rejected" if not failed else "self-test FAILED")
        return 1 if failed else 0
    problems = check(docs, sidecar, replicas)
    for p in problems:
        print(f"{path}: {p}")
    if not problems:
        print(f"{path}: policy checks passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
