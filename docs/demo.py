"""The walk-through `make demo` runs on the embedded defaults.

1. The example service agreements are checked, and `policy explain` walks through decisions:
   a technician in scope, out of scope, outside business hours, and with a just-in-time grant.
2. As root: a demo practice tree and a technician OS account are made; a real server (SQLite,
   mTLS material made on first start) and a real agent (fanotify) run; the technician is
   allowed one access and denied another; the journal and the signed checkpoint verify; the
   events arrive at the server verified; the evidence is exported and verified offline.
   Without root the agent cannot gate: the demo says so and runs the agent in monitor mode.
3. Possible breaches: the out-of-scope attempt and a bulk read of backups raise one incident
   each (with the s 26WH due date); the incidents, a draft s 26WK statement and the breach
   register are printed.
4. The audit console, served by the same server: the demo practice manager gets a password,
   the demo signs in as her and checks the request, the incidents and the statement are
   there, and prints the address and the sign-in.

Everything lives under a fresh temporary directory and every process the demo starts is
stopped by PID at the end. With CUSTODES_DEMO_KEEP=1 the server (and its console) keeps
running so a person can sign in; the demo prints its PID and how to stop it.
Nothing here is needed by the product; it only shows it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "custodes"
AGREEMENTS = sorted((ROOT / "policies" / "agreements").glob("*.yaml"))
GP = ROOT / "policies" / "agreements" / "harbourside-gp.yaml"
DEMO_ACCOUNT = "custodes-demo-jsmith"
STEP_TIMEOUT = 60
CLIENT = "harbourside-gp"
MANAGER = "mei.tran"  # the practice manager (an approver of the client)
BULK_FILES = 5  # the demo agreement's bulk-read threshold (distinct files in 10 minutes)
BACKUPS = 8  # the nightly backups the technician reads in the bulk-read story
KEEP = os.environ.get("CUSTODES_DEMO_KEEP") == "1"


def banner(text: str) -> None:
    """Print a step heading."""
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def run(args: Sequence[str | Path], *, check: bool = True, quiet: bool = False) -> str:
    """Run one `custodes` command (or another program), echoing it and its output."""
    argv = [str(a) for a in args]
    shown = ["custodes", *argv[1:]] if argv[0] == str(BIN) else argv
    print(f"$ {' '.join(shown)}", flush=True)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False)
    out = (proc.stdout + proc.stderr).rstrip()
    if out and not quiet:
        print(textwrap.indent(out, "  "), flush=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: step failed with exit {proc.returncode}: {' '.join(shown)}")
    return proc.stdout


def policy_story() -> None:
    """Check the example agreements and explain four decisions."""
    banner("The service agreements are valid")
    run([BIN, "policy", "check", *AGREEMENTS])
    letter = "/srv/bestpractice/documents/patients/0042/referral.pdf"
    backup = "/srv/backups/bestpractice/2026-11-20.bak"
    weekday_10am = "2026-11-18T10:00:00"
    weekday_10pm = "2026-11-18T22:00:00"
    banner("In scope: a technician checks last night's backup in business hours")
    explain(backup, weekday_10am)
    banner("Out of scope: the same technician opens a patient's referral letter")
    explain(letter, weekday_10am)
    banner("Outside business hours: the backup check at 10 p.m.")
    explain(backup, weekday_10pm)
    banner("With a just-in-time grant: the letter may be read for two hours")
    explain(letter, weekday_10am, "--grant", "patient-documents:read:2h", "--json")


def explain(path: str, at: str, *extra: str) -> None:
    """`policy explain` of technician akaur reading `path` at `at` under the GP agreement."""
    run(
        [
            BIN,
            "policy",
            "explain",
            GP,
            "--technician",
            "akaur",
            "--path",
            path,
            "--action",
            "read",
            "--at",
            at,
            *extra,
        ]
    )


def free_port() -> int:
    """A free loopback port (the server listens on it and the next one)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket() as s2:
            if s2.connect_ex(("127.0.0.1", port + 1)) != 0:
                return port
    raise SystemExit("demo: no free pair of loopback ports")


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    """Wait (bounded) until something listens on 127.0.0.1:port."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the {what} exited early (code {proc.returncode})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"demo: the {what} did not listen on port {port} within 30 s")


@contextlib.contextmanager
def background(
    args: Sequence[str | Path], log: Path, *, keep: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-running process; stop it by PID (SIGTERM, then SIGKILL) on exit, unless
    `keep` and the demo got that far without an error (then it is left running)."""
    fh = log.open("wb")
    proc = subprocess.Popen(
        [str(a) for a in args], stdout=fh, stderr=subprocess.STDOUT, start_new_session=keep
    )
    try:
        yield proc
    except BaseException:
        stop(proc)
        raise
    finally:
        fh.close()
    if not keep:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process the demo started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def demo_account() -> Iterator[pwd.struct_passwd]:
    """The technician's OS account on the practice server (made for the demo, then removed)."""
    made = False
    try:
        entry = pwd.getpwnam(DEMO_ACCOUNT)
    except KeyError:
        subprocess.run(
            ["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", DEMO_ACCOUNT], check=True, timeout=30
        )
        made = True
        entry = pwd.getpwnam(DEMO_ACCOUNT)
    try:
        yield entry
    finally:
        if made:
            subprocess.run(["userdel", DEMO_ACCOUNT], check=False, timeout=30)


def demo_agreement(practice: Path) -> str:
    """The Harbourside agreement moved under the demo tree, open every hour of every day.

    The demo runs whenever you run it, so its business hours cover the whole week; the hours
    logic itself is shown by `policy explain` above.
    """
    text = GP.read_text()
    text = text.replace("/srv/", f"{practice}/")
    text = text.replace("accounts: [jsmith, jsmith-admin]", f"accounts: [{DEMO_ACCOUNT}]")
    hours_start = text.index("business_hours:")
    hours_end = text.index("holidays:")
    every_day = (
        "business_hours:\n"
        "  - days: [mon, tue, wed, thu, fri, sat, sun]\n"
        '    start: "00:00"\n'
        '    end: "23:59"\n'
    )
    rest = text[hours_end:].replace(
        "holidays: [2025-12-25, 2025-12-26, 2026-01-01, 2026-01-26]", "holidays: []"
    )
    # A bulk read is more than BULK_FILES distinct files in 10 minutes (50 in the real one),
    # so the demo shows one with a handful of backups.
    bulk = "  bulk_read:\n    files: 50\n"
    if bulk not in rest:
        raise SystemExit("demo: the Harbourside agreement no longer has a bulk_read of 50 files")
    rest = rest.replace(bulk, f"  bulk_read:\n    files: {BULK_FILES}\n")
    return text[:hours_start] + every_day + rest


def as_technician(entry: pwd.struct_passwd, path: Path) -> str:
    """Open `path` for reading as the technician's account; report what the kernel said."""
    proc = subprocess.run(
        [
            "setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--clear-groups",
            "head",
            "-c",
            "40",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    verdict = "ALLOWED" if proc.returncode == 0 else f"DENIED ({proc.stderr.strip()})"
    print(f"  {DEMO_ACCOUNT} reads {path.name}: {verdict}", flush=True)
    return verdict


def system_story(work: Path) -> None:
    """Server + agent on this machine: gate, journal, ship, verify, export."""
    enforcing = os.geteuid() == 0 and sys.platform == "linux"
    practice = work / "practice"
    for sub in (
        "bestpractice/documents/patients/0042",
        "bestpractice/attachments",
        "backups/bestpractice",
        "scans/inbox",
    ):
        (practice / sub).mkdir(parents=True)
    letter = practice / "bestpractice/documents/patients/0042/referral.pdf"
    letter.write_text("Referral for patient 0042 (fictional).\n")
    backup = practice / "backups/bestpractice/2026-11-20.bak"
    backup.write_text("fictional nightly dump\n")
    backups = [practice / f"backups/bestpractice/2026-11-{d:02d}.bak" for d in range(1, 9)]
    for path in backups[:BACKUPS]:
        path.write_text("fictional nightly dump\n")
    for p in practice.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    practice.chmod(0o755)
    work.chmod(0o755)
    agreement = work / "agreement.yaml"
    agreement.write_text(demo_agreement(practice))
    data, state = work / "server-data", work / "agent-state"
    port = free_port()
    console_port = free_port()
    while abs(console_port - port) <= 1:
        console_port = free_port()

    banner("The MSP's server: CA, certificates and signing key on first start (SQLite)")
    run([BIN, "server", "init", "--data", data])
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(
            background(
                [
                    BIN,
                    "--log-format",
                    "json",
                    "server",
                    "run",
                    "--data",
                    data,
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--console",
                    f"127.0.0.1:{console_port}",
                ],
                work / "server.log",
                keep=KEEP,
            )
        )
        wait_for_port(port, server, "server")
        print(f"  server listening on 127.0.0.1:{port} (mTLS) and :{port + 1} (enrolment)")

        banner("The practice's service agreement is applied on the server")
        run([BIN, "server", "agreement", "apply", agreement, "--data", data])

        banner("Enrol the practice server's agent with a single-use token")
        run(
            [
                BIN,
                "agent",
                "init",
                "--config",
                work / "agent.toml",
                "--agent-id",
                "harbourside-srv1",
                "--client",
                "harbourside-gp",
                "--agreement",
                agreement,
                "--state-dir",
                state,
            ]
        )
        token = (
            run(
                [
                    BIN,
                    "server",
                    "enroll-token",
                    "--data",
                    data,
                    "--client",
                    "harbourside-gp",
                    "--ttl",
                    "10m",
                ],
                quiet=True,
            )
            .strip()
            .splitlines()[-1]
        )
        print(f"  token: {token[:24]}…")
        run(
            [
                BIN,
                "agent",
                "enroll",
                "--server",
                f"127.0.0.1:{port}",
                "--token",
                token,
                "--config",
                work / "agent.toml",
            ]
        )

        if not enforcing:
            banner("Not root: the agent cannot gate here; it runs in monitor mode")
        account = stack.enter_context(demo_account()) if enforcing else None
        banner("The agent gates the practice's sensitive areas")
        agent = stack.enter_context(
            background(
                [BIN, "--log-format", "json", "agent", "run", "--config", work / "agent.toml"],
                work / "agent.log",
            )
        )
        wait_for_marks(agent, work / "agent.log")

        request_id: str | None = None
        if account is not None:
            banner("A technician checks the backup (in scope) and opens a letter (out of scope)")
            as_technician(account, backup)
            as_technician(account, letter)
            request_id = jit_story(work, data=data, port=port, account=account, letter=letter)
        time.sleep(1.5)  # one group commit and one shipping round

        banner("The agent's journal verifies, and its latest signed checkpoint")
        run([BIN, "agent", "journal", "verify", "--config", work / "agent.toml"])
        run([BIN, "agent", "checkpoint", "--config", work / "agent.toml"])
        (work / "agent-checkpoint.txt").write_text(
            run([BIN, "agent", "checkpoint", "--config", work / "agent.toml"], quiet=True)
        )

        banner("The server received the events, verified")
        wait_for_events(data)
        run([BIN, "events", "--data", data, "--client", "harbourside-gp"])

        banner(
            "Export the client's evidence and verify it offline, against the agent's own checkpoint"
        )
        export = work / "harbourside-evidence.json"
        run(
            [
                BIN,
                "evidence",
                "export",
                "--data",
                data,
                "--client",
                "harbourside-gp",
                "--out",
                export,
            ]
        )
        run(
            [BIN, "evidence", "verify", export, "--agent-checkpoint", work / "agent-checkpoint.txt"]
        )

        incidents = incident_story(data, account, backups)
        console_story(data, console_port, request_id, incidents)
        if KEEP:
            print(
                f"\n  The server keeps running (PID {server.pid}) with its console at "
                f"https://127.0.0.1:{console_port}/ ; stop it with: kill {server.pid}",
                flush=True,
            )


def jit_story(
    work: Path,
    *,
    data: Path,
    port: int,
    account: pwd.struct_passwd,
    letter: Path,
) -> str:
    """Just-in-time access: request with a ticket, the practice manager approves, revoke.

    Returns the request's id.
    """
    banner("People log in with single-use tokens: a technician and the practice manager")
    people = {
        "jsmith": ["--role", "technician"],
        MANAGER: ["--role", "approver", "--client", CLIENT],
    }
    for name, role in people.items():
        token = run([BIN, "server", "user", "add", name, *role, "--data", data], quiet=True).strip()
        profile = work / "profiles" / name
        run([BIN, "login", "--server", f"127.0.0.1:{port}", "--token", token, "--profile", profile])

    def access(name: str, *args: str | Path, quiet: bool = False) -> str:
        return run([BIN, "access", *args, "--profile", work / "profiles" / name], quiet=quiet)

    banner("The technician asks for two hours on the patient documents, with a ticket")
    request_id = access(
        "jsmith",
        *("request", "--client", "harbourside-gp", "--area", "patient-documents"),
        *("--actions", "read", "--for", "2h", "--ticket", "HGP-20931"),
        *("--reason", "referral letter will not open in Best Practice"),
        quiet=True,
    ).strip()
    print(f"  request {request_id} is pending")
    as_technician(account, letter)

    banner("The practice manager approves; the grant reaches the gate at once")
    access("mei.tran", "approve", request_id)
    wait_until_read(account, letter, "ALLOWED")
    as_technician(account, letter)

    banner("The practice manager revokes it; the gate denies again at once")
    access("mei.tran", "revoke", request_id, "--why", "letter fixed")
    wait_until_read(account, letter, "DENIED")
    as_technician(account, letter)
    time.sleep(1.5)  # the agent ships what it journaled under the grant
    access("mei.tran", "show", request_id)
    return request_id


def incident_story(data: Path, account: pwd.struct_passwd | None, backups: list[Path]) -> list[str]:
    """The out-of-scope attempt and a bulk read raise incidents; list, statement, register.

    Returns the incidents' ids.
    """
    if account is None:
        banner("Not root: no technician acts on this machine, so no incident is raised")
    else:
        banner(
            f"A technician reads {len(backups)} nightly backups in a few seconds: more than the "
            f"agreement's {BULK_FILES} distinct files in 10 minutes (a bulk read)"
        )
        as_technician_all(account, backups)
        banner("Possible breaches: one incident per situation, with the s 26WH due date")
        wait_for_incidents(data, {"access_denied", "bulk_read"})
    run([BIN, "incidents", "list", "--data", data])
    listed = incidents_json(data)
    ids = [str(i["id"]) for i in listed]
    bulk = next((str(i["id"]) for i in listed if i["rule"] == "bulk_read"), None)
    if bulk is not None:
        banner(f"The draft statement to the Commissioner (s 26WK) for {bulk}")
        run([BIN, "incidents", "statement", bulk, "--data", data])
    banner("The breach register the practice's policy promises (CSV)")
    run([BIN, "incidents", "register", "--format", "csv", "--data", data])
    return ids


def as_technician_all(entry: pwd.struct_passwd, paths: Sequence[Path]) -> None:
    """Read each of `paths` as the technician's account, in one process."""
    proc = subprocess.run(
        [
            "setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--clear-groups",
            "head",
            "-q",
            "-c",
            "40",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    verdict = "ALLOWED" if proc.returncode == 0 else f"DENIED ({proc.stderr.strip()})"
    print(f"  {DEMO_ACCOUNT} reads {len(paths)} backups: {verdict}", flush=True)


def incidents_json(data: Path) -> list[dict[str, object]]:
    """`custodes incidents list --json`, quietly."""
    out = subprocess.run(
        [str(BIN), "incidents", "list", "--json", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for_incidents(data: Path, rules: set[str]) -> None:
    """Wait (bounded) until incidents of every one of `rules` are stored."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if rules <= {str(i["rule"]) for i in incidents_json(data)}:
            return
        time.sleep(0.3)
    raise SystemExit(f"demo: no incidents of {sorted(rules)} within 20 s")


@dataclass
class Browser:
    """Just enough of a browser for the demo's check: HTTPS to the console, a cookie jar."""

    port: int
    ca: Path
    jar: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> str:
        """One request; returns the body (raises SystemExit on a 4xx/5xx answer)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30, context=context)
        origin = f"https://127.0.0.1:{self.port}"
        headers = {"Origin": origin} if method == "POST" else {}
        if self.jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
        finally:
            conn.close()
        for raw in resp.headers.get_all("Set-Cookie") or []:
            name, _, rest = raw.partition("=")
            value = rest.split(";", 1)[0]
            if value:
                self.jar[name.strip()] = value
            else:
                self.jar.pop(name.strip(), None)
        if resp.status >= 400:
            raise SystemExit(f"demo: the console answered {resp.status} to {method} {path}")
        return text

    def sign_in(self, name: str, password: str) -> None:
        """Sign in through the form (its CSRF token and pre-session cookie)."""
        token = re.search(r'name="csrf" value="([^"]*)"', self.request("GET", "/signin"))
        if token is None:
            raise SystemExit("demo: the console's sign-in form has no CSRF token")
        self.request(
            "POST", "/signin", {"csrf": token.group(1), "name": name, "password": password}
        )


def console_story(data: Path, port: int, request_id: str | None, incidents: list[str]) -> None:
    """Give the practice manager a password, check what she sees, print the sign-in."""
    banner("The audit console: the practice manager signs in with a password")
    people = run([BIN, "server", "user", "list", "--data", data], quiet=True)
    if MANAGER not in people:
        add = ["user", "add", MANAGER, "--role", "approver", "--client", CLIENT]
        run([BIN, "server", *add, "--data", data], quiet=True)
    password = f"demo-{secrets.token_urlsafe(9)}"
    print(f"$ custodes server user passwd {MANAGER} --stdin --data {data}", flush=True)
    proc = subprocess.run(
        [str(BIN), "server", "user", "passwd", MANAGER, "--stdin", "--data", str(data)],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"demo: setting the console password failed: {proc.stderr.strip()}")
    browser = Browser(port, data / "ca" / "ca.crt")
    browser.sign_in(MANAGER, password)
    shown = []
    if request_id is not None and request_id in browser.request("GET", "/requests"):
        shown.append(f"request {request_id}")
    listing = browser.request("GET", "/incidents")
    shown += [inc for inc in incidents if inc in listing]
    for inc in incidents[-1:]:
        if "s 26WK" in browser.request("GET", f"/incidents/{inc}"):
            shown.append(f"the draft s 26WK statement of {inc}")
    if "Client access statement" in browser.request("GET", f"/statement?client={CLIENT}"):
        shown.append("this month's client access statement")
    missing = ([request_id] if request_id else []) + incidents
    if any(not any(m in s for s in shown) for m in missing):
        raise SystemExit(f"demo: the console does not show all of {missing}; it showed {shown}")
    print(f"  signed in as {MANAGER}; the console shows: {', '.join(shown)}", flush=True)
    banner("Sign in to the console yourself")
    print(f"  address:  https://127.0.0.1:{port}/  (the server's own certificate; the CA is")
    print(f"            {data / 'ca' / 'ca.crt'})")
    print(f"  sign in:  {MANAGER} / {password}   (the demo practice manager)")
    if not KEEP:
        print("  (the demo stops the server at its end; CUSTODES_DEMO_KEEP=1 keeps it running)")


def wait_until_read(account: pwd.struct_passwd, path: Path, want: str) -> None:
    """Poll (bounded, quietly) until the technician's read gives `want`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.redirect_stdout(None):
            got = as_technician(account, path)
        if got.startswith(want):
            return
        time.sleep(0.05)
    raise SystemExit(f"demo: the gate did not answer {want} within 10 s")


def wait_for_marks(agent: subprocess.Popen[bytes], log: Path) -> None:
    """Wait (bounded) until the agent says it started: its marks are placed by then, so the
    technician's first read is gated and journaled."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise SystemExit(f"demo: the agent exited early (code {agent.returncode})")
        with contextlib.suppress(OSError):
            if '"agent_started"' in log.read_text(errors="replace"):
                return
        time.sleep(0.1)
    raise SystemExit("demo: the agent did not start within 20 s")


def wait_for_events(data: Path) -> None:
    """Wait (bounded) until the server has stored some of the agent's events."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = subprocess.run(
            [str(BIN), "events", "--data", str(data), "--json", "--limit", "1"],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        ).stdout
        if out.strip():
            return
        time.sleep(0.3)
    raise SystemExit("demo: the server stored no events within 20 s")


def main() -> int:
    """Run each part of the demo; stop at the first failure."""
    policy_story()
    work = Path(tempfile.mkdtemp(prefix="custodes-demo-"))
    try:
        system_story(work)
    finally:
        logs = [p for p in (work / "server.log", work / "agent.log") if p.exists()]
        if KEEP:
            print(f"\nDemo files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        del logs
    banner("Done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
