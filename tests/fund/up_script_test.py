#!/usr/bin/env python3
"""`./formica up` runs the fund end to end and Ctrl-C stops everything.

Runs the script as a user does (from its own terminal session, so that
SIGINT reaches it as Ctrl-C would), on free loopback ports and a temporary
data directory, with a small population; checks the summary says money and
shares add up and the clearing day reconciled; then sends SIGINT to the
session and checks that the script exits 0 and that no process of it is
left.

usage: up_script_test.py SOURCE_ROOT BUILD_DIR
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(root, build):
    data = tempfile.mkdtemp(prefix="formica-up-")
    out_path = os.path.join(data, "up.out")
    env = dict(os.environ, FORMICA_NO_BUILD="1", FORMICA_BIN_DIR=build, FORMICA_DATA=data,
               FORMICA_REGISTRY=f"127.0.0.1:{free_port()}", FORMICA_DTS=f"127.0.0.1:{free_port()}",
               FORMICA_DMS=f"127.0.0.1:{free_port()}", FORMICA_DMS_B=f"127.0.0.1:{free_port()}",
               FORMICA_CONSOLE=f"127.0.0.1:{free_port()}",
               FORMICA_DSRD_METRICS=f"127.0.0.1:{free_port()}",
               FORMICA_DTS_METRICS=f"127.0.0.1:{free_port()}",
               FORMICA_DMS_METRICS=f"127.0.0.1:{free_port()}",
               FORMICA_DMS_B_METRICS=f"127.0.0.1:{free_port()}")
    with open(out_path, "w") as out:
        p = subprocess.Popen([os.path.join(root, "formica"), "up", "--users", "3000", "--seconds", "3"],
                             cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
    failures = []
    deadline = time.time() + 240
    text = ""
    while time.time() < deadline:
        time.sleep(0.5)
        text = open(out_path, errors="replace").read()
        if "Press Ctrl-C to stop." in text or p.poll() is not None:
            break
    for want in ["Formica is up.", "3000 users created", "money and shares add up",
                 "order-confirmed messages delivered", "committed", "reconciled",
                 "clearing-1.csv written", f"logs                            {data}/logs",
                 "dmsd of zone rz-a", "dmsd of zone rz-b", "zone rz-a: ", "zone rz-b: ",
                 "fund-wide (fund.v1.FundTotals, GZone)"]:
        if want not in text:
            failures.append(f"the output lacks {want!r}")
    if "DO NOT add up" in text or "NOT OK" in text:
        failures.append("the summary reports a problem")
    # The console and the daemons' metrics pages it prints answer.
    console = env["FORMICA_CONSOLE"]
    if f"http://{console}/" not in text:
        failures.append("the output lacks the console's address")
    else:
        try:
            page = urllib.request.urlopen(f"http://{console}/", timeout=10).read().decode()
            if "Formica" not in page:
                failures.append("the console's page does not look like the console")
        except OSError as e:
            failures.append(f"the console does not answer: {e}")
    for key, series in [("FORMICA_DSRD_METRICS", "formica_registry_"),
                        ("FORMICA_DTS_METRICS", "formica_dts_committed_total"),
                        ("FORMICA_DMS_METRICS", "formica_dms_"),
                        ("FORMICA_DMS_B_METRICS", "formica_dms_")]:
        url = f"http://{env[key]}/metrics"
        if url not in text:
            failures.append(f"the output lacks {url}")
            continue
        try:
            body = urllib.request.urlopen(url, timeout=10).read().decode()
            if series not in body:
                failures.append(f"{url} has no {series}")
        except OSError as e:
            failures.append(f"{url} does not answer: {e}")
    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
    try:
        code = p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        code = "timeout"
    if code != 0:
        failures.append(f"after Ctrl-C it exited with {code}")
    time.sleep(0.5)
    left = subprocess.run(["ps", "-eo", "pid,pgid,args"], capture_output=True, text=True).stdout
    mine = [l for l in left.splitlines()[1:] if l.split()[1] == str(p.pid)]
    if mine:
        failures.append("processes left after Ctrl-C: " + "; ".join(mine))
        os.killpg(p.pid, signal.SIGKILL)
    if failures:
        print(open(out_path, errors="replace").read())
        for f in failures:
            print("FAIL:", f)
        return 1
    subprocess.run(["rm", "-rf", data])
    print("ok: up ran the fund, reconciled, and stopped on Ctrl-C")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
