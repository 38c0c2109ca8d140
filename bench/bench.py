#!/usr/bin/env python3
"""Benchmark apiproxy-dataplane against nginx on one machine (python3 stdlib only).

  bench.py throughput [--conns 64,1000] [--duration 5] [--rounds 6] [--body-size 1024]
  bench.py stream     [--size-mib 1024] [--nginx-buffer 64k]
  bench.py sse        [--streams 10] [--events 20] [--gap-ms 20]
  bench.py instr      [--n1 2000] [--n2 6000]
  bench.py stats      [--conns 64,1000] [--duration 5] [--rounds 6]  (stats on + pushing vs off)
  bench.py h2         [--parts slow,burst,tls,sse,chat] [--sse-streams 10000]  (TLS and HTTP/2 upstreams)
  bench.py keys       [--parts load,instr,memory] [--keys 100000]  (keyed mapping vs open; memory a proxy key)
  bench.py fleet      [--nodes 30] [--mappings 10000] [--changes 100] [--idle 30] [--resync 10s]  (N nodes, one Redis)
  common options:     --binary PATH --out DIR --port-offset N --skip-dataplane --keep

Load generators, origins and this script run on CPU 0; every proxy runs on
CPU 1 in its own session (setsid), hence its own scheduler autogroup, so
proxies loaded at the same time get equal shares of CPU 1. Everything listens
on 127.0.0.1. Every process started here is stopped by its PID (SIGTERM, then
SIGKILL), also on Ctrl-C or an error. Methodology: README.md.
"""
import argparse, asyncio, json, os, re, resource, shutil, signal, socket
import base64, datetime, hashlib, ssl, statistics, subprocess, sys, tempfile, threading, time, urllib.error, urllib.request

HOST = "127.0.0.1"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BINARY = os.path.join(os.path.dirname(HERE), "target", "release", "apiproxy-dataplane")
DEFAULT_CP_BINARY = os.path.join(os.path.dirname(HERE), "target", "release", "apiproxy-controlplane")
EXAMPLES = os.path.join(os.path.dirname(HERE), "target", "release", "examples")  # origin, sse_load
INSECURE = ssl._create_unverified_context()  # the origins' own /stats, on 127.0.0.1
CACHE = "/tmp/apiproxy-bench-cache"  # big test files, kept between runs
CLK_TCK = os.sysconf("SC_CLK_TCK")
PIN = (os.cpu_count() or 1) >= 2
LOAD_CPU, PROXY_CPU = "0", "1"
BASE_PORTS = {"upstream": 18080, "sink": 18082, "sse": 18083, "nginx": 18181, "nginx-b": 18184,
              "nginx-buf": 18185, "dataplane": 18190, "metrics": 18199,
              "stats-off": 18191, "metrics-off": 18198, "stats-off-b": 18192, "metrics-off-b": 18197,
              "redis": 18379, "controlplane": 18101,
              "origin": 18443, "origin-slow": 18445, "nginx-origin": 18446, "nginx-origin-h1": 18447,
              "dp-h1": 18193, "metrics-h1": 18196, "dp-h2": 18194, "metrics-h2": 18195,
              "origin-h1": 18448, "origin-plain": 18449, "origin-chat": 18450, "origin-chat-h1": 18451, "origin-slow-h1": 18452,
              "nginx-plain": 18186, "dp-plain": 18187, "metrics-plain": 18188,
              "base-h1": 18189, "metrics-base-h1": 18200, "base-h2": 18201, "metrics-base-h2": 18202,
              "base": 18203, "metrics-base": 18204,
              "log-off": 18205, "metrics-log-off": 18206, "log-off-b": 18207, "metrics-log-off-b": 18208,
              "log-json": 18209, "metrics-log-json": 18210, "log-stalled": 18211, "metrics-log-stalled": 18212,
              "nginx-log": 18213,
              "open": 18214, "metrics-open": 18215, "open-b": 18216, "metrics-open-b": 18217,
              "keyed": 18218, "metrics-keyed": 18219, "keys-none": 18220, "metrics-keys-none": 18221,
              "keys-many": 18222, "metrics-keys-many": 18223,
              "fleet-base": 18224, "metrics-fleet-base": 18225, "fleet-solo": 18226, "metrics-fleet-solo": 18227}
P = dict(BASE_PORTS)  # after --port-offset
ADMIN_TOKEN, NODE_TOKEN = "bench-admin-token-0123456789", "bench-node-token-0123456789"
LIVE = set()          # running clients (wrk, curl, h2load): killed by PID on abort
NOFILE = [65536]      # fd limit children get (ulimit -n), set in run()


def log(msg):
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


def pinned(cpu, argv):
    return (["taskset", "-c", cpu] if PIN else []) + list(argv)


def spawn(argv):
    """Start a client on the load CPU (same session as us: Ctrl-C reaches it too)."""
    p = subprocess.Popen(pinned(LOAD_CPU, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    LIVE.add(p)
    return p


def collect(p, timeout):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate(timeout=10)
    LIVE.discard(p)
    return p.returncode, out, err


# ------------------------------------------------------------------ /proc sampling
def proc_tree(root):
    """root and its descendants (nginx: master + worker)."""
    kids = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
            kids.setdefault(int(s[s.rindex(")") + 2:].split()[1]), []).append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    out, todo = [], [root]
    while todo and len(out) < 1000:
        out.append(todo.pop())
        todo.extend(kids.get(out[-1], []))
    return out


def cpu_ticks(pids):
    """Sum of utime + stime (a process's stat covers all of its threads)."""
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                s = f.read()
            total += sum(int(x) for x in s[s.rindex(")") + 2:].split()[11:13])
        except (OSError, ValueError):
            pass
    return total


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/status" % p) as f:
                total += next((int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return total


def hwm_kib(pid):
    """VmHWM: the highest RSS the process has had."""
    with open("/proc/%d/status" % pid) as f:
        return next((int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")), 0)


def cpu_busy():
    """{cpu: (busy ticks, total ticks)} from /proc/stat; busy excludes idle and iowait."""
    out = {}
    with open("/proc/stat") as f:
        for m in re.finditer(r"^cpu(\d+) (.*)$", f.read(), re.M):
            v = [int(x) for x in m.group(2).split()[:8]]
            out[int(m.group(1))] = (sum(v) - v[3] - v[4], sum(v))
    return out


class RssSampler(threading.Thread):
    """Summed VmRSS of a process tree every `interval` s: first sample and peak."""

    def __init__(self, root, interval):
        super().__init__(daemon=True)
        self.pids, self.interval, self.halt = proc_tree(root), interval, threading.Event()
        self.first = self.peak = rss_kib(self.pids)
        self.samples = []
        self.start()

    def run(self):
        while not self.halt.wait(self.interval):
            self.samples.append(rss_kib(self.pids))
            self.peak = max(self.peak, self.samples[-1])

    def stop(self):
        self.halt.set()
        self.join(5)
        self.peak = max(self.peak, rss_kib(self.pids))
        return self.peak


# ------------------------------------------------------------------ servers
class Stack:
    """The servers of one run; configs and logs in a fresh `mktemp -d` directory."""

    def __init__(self, a):
        self.a, self.procs = a, []
        self.dir = tempfile.mkdtemp(prefix="apiproxy-bench.")
        os.chmod(self.dir, 0o755)  # nginx workers run as nobody when started as root

    def start(self, name, argv, cpu, port, env=None, wait=15.0):
        """Start argv pinned to `cpu` in a new session, wait until `port`
        accepts (port None: do not wait)."""
        with open(self.log_path(name), "ab") as logf:
            p = subprocess.Popen(pinned(cpu, argv), stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                 env=dict(os.environ, **(env or {})), start_new_session=True)
        p.name = name
        self.procs.append(p)
        if port is None:
            return p
        deadline = time.monotonic() + wait
        while True:
            if p.poll() is not None:
                raise RuntimeError("%s exited (rc %s): see %s/%s.log" % (name, p.returncode, self.dir, name))
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                return p
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("%s: port %d not listening after %.0f s" % (name, port, wait))
                time.sleep(0.05)

    def stop(self, p, timeout=10.0):
        """SIGTERM the PID, SIGKILL after `timeout`; then SIGKILL any of its
        descendants still in the process group we created for it."""
        tree = proc_tree(p.pid)[1:] if p.poll() is None else []
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log("%s (pid %d) still running %.0f s after SIGTERM: SIGKILL" % (p.name, p.pid, timeout))
                p.kill()
                p.wait(10)
            if p.returncode not in (0, -signal.SIGTERM):
                log("%s (pid %d) exited with status %s: see %s/%s.log" % (p.name, p.pid, p.returncode, self.dir, p.name))
        for q in tree:
            try:
                if os.getpgid(q) == p.pid:
                    os.kill(q, signal.SIGKILL)
            except OSError:
                pass
        if p in self.procs:
            self.procs.remove(p)

    def log_path(self, name):
        return os.path.join(self.dir, name + ".log")

    def stop_many(self, procs):
        """SIGTERM them all first, so they drain in parallel, then stop() each."""
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            self.stop(p)

    def stop_all(self):
        for c in list(LIVE):
            c.kill()
            collect(c, 10)
        for p in reversed(self.procs):
            self.stop(p)

    def nginx(self, name, port, cpu, conns, http, wrap=(), extra_g=""):
        """One nginx, 1 worker, foreground (`daemon off`), everything under self.dir."""
        tmp = os.path.join(self.dir, "tmp-" + name)
        conf = f"""worker_processes 1;
worker_rlimit_nofile {NOFILE[0]};
pid {self.dir}/{name}.pid;
events {{ worker_connections {conns}; }}
http {{
    access_log off; server_tokens off; tcp_nodelay on;
    keepalive_timeout 65s; keepalive_requests 1000000;
    client_max_body_size 0;
    client_body_temp_path {tmp}-body; proxy_temp_path {tmp}-proxy; fastcgi_temp_path {tmp}-fcgi;
    uwsgi_temp_path {tmp}-uwsgi; scgi_temp_path {tmp}-scgi;
{http}}}
"""
        path = os.path.join(self.dir, name + ".conf")
        with open(path, "w") as f:
            f.write(conf)
        argv = list(wrap) + ["nginx", "-p", self.dir, "-e", os.path.join(self.dir, name + ".error.log"),
                             "-c", path, "-g", "daemon off;" + extra_g]
        return self.start(name, argv, cpu, port, wait=120.0 if wrap else 15.0)

    def upstream(self, body_size=1024, big=None, extra=""):
        """Origin nginx on the load CPU: any path -> 200 with a fixed body of
        body_size bytes; /big -> the file `big` (stream); `extra`: more
        locations."""
        if body_size <= 4096:
            root = 'return 200 "%s";' % ("x" * body_size)
        else:
            with open(os.path.join(self.dir, "body.bin"), "wb") as f:
                f.write(b"x" * body_size)
            os.chmod(f.name, 0o644)
            root = "alias %s;" % f.name
        big = "location = /big { alias %s; }" % big if big else ""
        http = (f"    sendfile on; default_type application/octet-stream;\n"
                f"    server {{ listen {HOST}:{P['upstream']} backlog=4096;\n"
                f"        location / {{ {root} }}\n        {big}\n        {extra}\n    }}\n")
        return self.nginx("upstream", P["upstream"], LOAD_CPU, 16384, http)

    def nginx_proxy(self, name, routes, buffer_size=None, wrap=(), extra_g="", server_extra=""):
        """nginx reverse proxy on the proxy CPU; routes = {location prefix: origin port};
        server_extra: more directives for its server block."""
        buf = " proxy_buffer_size %s; proxy_buffers 4 %s;" % (buffer_size, buffer_size) if buffer_size else ""
        http = "".join(f"    upstream up{port} {{ server {HOST}:{port}; keepalive 1024;"
                       " keepalive_requests 1000000; keepalive_timeout 60s; }\n" for port in set(routes.values()))
        http += f"    server {{ listen {HOST}:{P[name]} backlog=4096; {server_extra}\n"
        http += "".join(f"        location {prefix} {{ proxy_pass http://up{port}; proxy_http_version 1.1;"
                        f' proxy_set_header Connection ""; proxy_buffering off; proxy_request_buffering off;{buf} }}\n'
                        for prefix, port in routes.items())
        return self.nginx(name, P[name], PROXY_CPU, 4096, http + "    }\n", wrap, extra_g)

    def dataplane(self, routes, wrap=(), name="dataplane", metrics="metrics", extra_env=None, binary=None,
                  cpu=PROXY_CPU, wait_listen=True):
        """The data plane on the proxy CPU, 1 worker; routes = {prefix: origin port, or target URL},
        or None for Redis mode (extra_env then names API_PROXY_REDIS_URL). Its access log is off (as
        nginx's is), unless extra_env turns it on. wait_listen=False: returns once started."""
        binary = binary or self.a.binary
        if not os.access(binary, os.X_OK):
            raise SystemExit("no data plane binary at %s (cargo build --release -p apiproxy-dataplane; "
                             "or --binary PATH; or --skip-dataplane)" % binary)
        source = {}
        if routes is not None:
            source["API_PROXY_MAPPINGS_FILE"] = os.path.join(self.dir, name + "-mappings.json")
            with open(source["API_PROXY_MAPPINGS_FILE"], "w") as f:
                json.dump({k: v if isinstance(v, str) else "http://%s:%d" % (HOST, v) for k, v in routes.items()}, f)
        env = {**source, "API_PROXY_LISTEN": "%s:%d" % (HOST, P[name]),
               "API_PROXY_METRICS_LISTEN": "%s:%d" % (HOST, P[metrics]), "API_PROXY_WORKERS": "1",
               "API_PROXY_DRAIN_TIMEOUT": "5s", "RUST_LOG": "warn", "API_PROXY_ACCESS_LOG": "off",
               **dict(kv.split("=", 1) for kv in self.a.dp_env), **(extra_env or {})}
        return self.start(name, list(wrap) + [binary], cpu, P[name] if wait_listen else None, env,
                          wait=120.0 if wrap else 15.0)

    def redis(self):
        """redis-server on the load CPU, no persistence."""
        return self.start("redis", ["redis-server", "--port", str(P["redis"]), "--bind", HOST, "--save", "",
                                    "--appendonly", "no", "--dir", self.dir], LOAD_CPU, P["redis"])

    def controlplane(self, extra_env=None):
        """The control plane (--cp-binary) on the load CPU, over self.redis()."""
        return self.start("controlplane", [cp_binary(self.a)], LOAD_CPU, P["controlplane"],
                          {"API_PROXY_REDIS_URL": redis_url(),
                           "API_PROXY_ADMIN_LISTEN": "%s:%d" % (HOST, P["controlplane"]),
                           "ADMIN_TOKEN": ADMIN_TOKEN, "API_PROXY_NODE_TOKEN": NODE_TOKEN, "RUST_LOG": "warn",
                           **(extra_env or {})})

    def helper(self, kind):
        """This script as a helper server (`_sink` / `_sse`) on the load CPU."""
        return self.start(kind, [sys.executable, os.path.abspath(__file__), "_" + kind, "--port", str(P[kind])],
                          LOAD_CPU, P[kind])


    def origin(self, name, *args, tls=True):
        """The benchmark origin (`--example origin`) on the load CPU; with
        `tls`, h2 + http/1.1 by ALPN (unless args say `--alpn`), its CA,
        certificate and key in self.dir/tls (the first origin makes them)."""
        binary = os.path.join(EXAMPLES, "origin")
        if not os.access(binary, os.X_OK):
            raise SystemExit("no %s (cargo build --release -p apiproxy-tests --examples)" % binary)
        cert = ["--cert-dir", self.tls_dir()] if tls else []
        if tls and os.path.exists(os.path.join(self.tls_dir(), "ca.pem")):
            cert += ["--reuse-cert"]
        return self.start(name, [binary, "--listen", "%s:%d" % (HOST, P[name])] + cert
                          + [str(x) for x in args], LOAD_CPU, P[name])

    def tls_dir(self):
        return os.path.join(self.dir, "tls")

    def nginx_tls_origin(self, body_size=1024):
        """nginx on the load CPU serving TLS with the origin's certificate:
        `nginx-origin` offers h2 and http/1.1, `nginx-origin-h1` http/1.1 only;
        both TLS 1.3 (nginx before 1.23.4 offers only up to TLS 1.2 unless told)."""
        d = self.tls_dir()
        ssl = (f"ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem; ssl_session_cache shared:S:10m;"
               " ssl_protocols TLSv1.2 TLSv1.3;")
        http = (f'    server {{ listen {HOST}:{P["nginx-origin"]} ssl http2 backlog=4096; {ssl}\n'
                f'        location / {{ return 200 "{"x" * body_size}"; }} }}\n'
                f'    server {{ listen {HOST}:{P["nginx-origin-h1"]} ssl backlog=4096; {ssl}\n'
                f'        location / {{ return 200 "{"x" * body_size}"; }} }}\n')
        return self.nginx("nginx-origin", P["nginx-origin"], LOAD_CPU, 16384, http)

    def nginx_tls_proxy(self, name, origin_port, conns=4096):
        """nginx proxying over TLS (HTTP/1.1: nginx has no HTTP/2 upstreams),
        verifying the origin against the test CA, sessions reused."""
        return self.nginx(name, P[name], PROXY_CPU, conns, nginx_proxy_http(self, name, origin_port))

    def dataplane_tls(self, name, metrics, origin_port, binary=None):
        """A data plane whose one mapping is `/` -> https://localhost:origin_port, trusting the test CA."""
        return self.dataplane({"/": "https://localhost:%d" % origin_port}, name=name, metrics=metrics,
                              extra_env={"API_PROXY_CA_FILE": os.path.join(self.tls_dir(), "ca.pem")},
                              binary=binary)


def redis_url():
    return "redis://%s:%d/" % (HOST, P["redis"])


def cp_binary(a):
    if not os.access(a.cp_binary, os.X_OK):
        raise SystemExit("no control plane binary at %s (cargo build --release -p apiproxy-controlplane)"
                         % a.cp_binary)
    return a.cp_binary


def origin_stats(port):
    with urllib.request.urlopen("https://%s:%d/stats" % (HOST, port), context=INSECURE, timeout=10) as r:
        return json.load(r)


def sse_load(port, path, streams, duration, *extra):
    """`--example sse_load` against 127.0.0.1:port (on the load CPU); started, not waited for."""
    return spawn([os.path.join(EXAMPLES, "sse_load"), "--target", "%s:%d" % (HOST, port), "--path", path,
                  "--streams", str(streams), "--duration-s", str(duration)] + [str(x) for x in extra])


def sse_result(p, timeout, what):
    rc, out, err = collect(p, timeout)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError("sse_load against %s failed (rc %s): %s %s" % (what, rc, out[-300:], err[-300:]))


def on_sigterm(*_):
    raise KeyboardInterrupt  # unwinds through run()'s finally


def run(a, fn):
    """Check ports, raise the fd limit, run fn(stack), always stop everything."""
    for name, port in P.items():
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                raise SystemExit("port %d (%s) is in use: stop that process or pass --port-offset N" % (port, name))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # inherited by nginx, wrk and the data plane (ulimit -n)
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (65536, hard if hard == resource.RLIM_INFINITY else max(hard, 65536)))
    except (ValueError, OSError):  # not allowed to raise the hard limit: go as high as it allows
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log("fd limit %d (the hard limit; 65536 wanted)" % hard)
    NOFILE[0] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    signal.signal(signal.SIGTERM, on_sigterm)
    st, ok = Stack(a), False
    try:
        fn(a, st)
        ok = True
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        st.stop_all()
        if ok and not a.keep:
            shutil.rmtree(st.dir, ignore_errors=True)
        else:
            log("configs and logs kept in " + st.dir)


def save(a, kind, data, text):
    """Print the table; write it and the raw results to --out."""
    os.makedirs(a.out, exist_ok=True)
    base = os.path.join(a.out, "%s-%s" % (kind, time.strftime("%Y%m%d-%H%M%S")))
    env = {"argv": sys.argv, "nproc": os.cpu_count(), "pinned": PIN, "uname": " ".join(os.uname()),
           "binary": a.binary, "binary_mtime": os.path.getmtime(a.binary) if os.path.exists(a.binary) else None}
    with open(base + ".json", "w") as f:
        json.dump({"kind": kind, "env": env, "results": data}, f, indent=1)
    with open(base + ".txt", "w") as f:
        f.write(text + "\n")
    print(text + "\n", flush=True)
    log("saved %s.json and .txt" % base)


def table(headers, rows):
    w = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    fmt = lambda r: "  ".join(str(x).rjust(n) for x, n in zip(r, w))  # noqa: E731
    return "\n".join([fmt(headers), fmt(["-" * n for n in w])] + [fmt(r) for r in rows])


def med(v):
    return statistics.median(v) if v else float("nan")


def pct(v, p):  # nearest-rank percentile
    v = sorted(v)
    return v[min(len(v) - 1, int(round((len(v) - 1) * p / 100.0)))] if v else float("nan")


# ------------------------------------------------------------------ throughput
def parse_wrk(out):
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}
    r = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
         "requests": int(re.search(r"(\d+) requests in", out).group(1))}
    for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
        r["p%s_ms" % p] = float(v) * unit[u]
    errs = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(non2xx.group(1) if non2xx else 0)
    r["errors"] = sum(map(int, errs.groups() if errs else ())) + r["non2xx"]
    # Which kind, to say what failed: wrk's socket errors and non-2xx answers.
    r["error_kinds"] = {k: int(v) for k, v in zip(("connect", "read", "write", "timeout"),
                                                   errs.groups() if errs else (0, 0, 0, 0)) if int(v)}
    if r["non2xx"]:
        r["error_kinds"]["non2xx"] = r["non2xx"]
    return r


def wrk_all(urls, conns, secs, headers=None):
    """One `wrk -t1 --latency` per target, all running at the same time;
    headers = {target: [header lines]} (`wrk -H`)."""
    procs = {n: spawn(["wrk", "-t1", "-c%d" % conns, "-d%ds" % secs, "--timeout", "10s", "--latency"]
                      + [x for h in (headers or {}).get(n, []) for x in ("-H", h)] + [u])
             for n, u in urls.items()}
    res = {}
    for n, p in procs.items():
        rc, out, err = collect(p, secs + 60)
        try:
            res[n] = parse_wrk(out)
        except AttributeError:
            raise RuntimeError("wrk against %s failed (rc %s): %s %s" % (n, rc, out[-400:], err[-400:]))
    return res


def cmd_throughput(a, st):
    st.upstream(a.body_size)
    routes = {"/": P["upstream"]}
    roots = {"nginx": st.nginx_proxy("nginx", routes).pid, "nginx-b": st.nginx_proxy("nginx-b", routes).pid}
    if not a.skip_dataplane:
        roots["dataplane"] = st.dataplane(routes).pid
    if a.baseline:  # another build, loaded in the same rounds (an A/B of a change)
        roots["base"] = st.dataplane(routes, name="base", metrics="metrics-base", binary=a.baseline).pid
    data, text = measure(a, roots, "nginx", "nginx-b")
    save(a, "throughput", data, "\n\n".join(text))


def measure(a, roots, ref, twin, headers=None):
    """Loads every target of `roots` at once for each --conns value; ratios
    are against `ref`, and `twin` (an identical copy of ref) is the A/A
    noise floor; `headers`: what wrk_all() sends each target."""
    names, data, text = list(roots), {}, []
    urls = {n: "http://%s:%d/" % (HOST, P[n]) for n in names}
    for conns in a.conns:
        log("%d conns: %d s warm-up" % (conns, a.warmup))
        wrk_all(urls, conns, a.warmup, headers)
        rounds = []
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate who starts first
            samplers = {n: RssSampler(roots[n], 0.2) for n in names}
            t0, c0 = {n: cpu_ticks(proc_tree(roots[n])) for n in names}, cpu_busy()
            res = wrk_all({n: urls[n] for n in order}, conns, a.duration, headers)
            c1 = cpu_busy()
            for n in names:
                ticks = cpu_ticks(proc_tree(roots[n])) - t0[n]
                res[n]["cpu_us_per_req"] = ticks * 1e6 / CLK_TCK / max(1, res[n]["requests"])
                res[n]["rss_peak_kib"] = samplers[n].stop()
            res["cpu_busy_pct"] = {c: 100.0 * (c1[c][0] - c0[c][0]) / max(1, c1[c][1] - c0[c][1]) for c in c1}
            rounds.append(res)
            log("%d conns, round %d/%d: %s" % (conns, r + 1, a.rounds,
                                              ", ".join("%s %.0f rps" % (n, res[n]["rps"]) for n in names)))
        data[conns] = rounds
        text.append(summarize_throughput(a, conns, names, rounds, ref, twin))
    return data, text


def served(url):
    """Requests a proxy has served so far: nginx's stub_status, or the sum of
    the data plane's apiproxy_requests_total."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    if "apiproxy_requests_total" in text:
        return sum(float(m) for m in re.findall(r"^apiproxy_requests_total\{[^}]*\} (\S+)$", text, re.M))
    return float(re.search(r"^\s*\d+\s+\d+\s+(\d+)\s*$", text, re.M).group(1))


def measure_windows(a, roots, counters, ref, twin):
    """Like measure(), but one continuous wrk per target for each --conns value,
    measured in --rounds windows of --duration s after --warmup s: no round
    re-pays the connection set-up (upstream TLS handshakes above all).
    `counters`: {target: URL that served() reads}."""
    names, data, text = list(roots), {}, []
    urls = {n: "http://%s:%d/" % (HOST, P[n]) for n in names}
    for conns in a.conns:
        # Each window also takes the counter reads: a margin, so the last
        # window ends well before the load does.
        total = a.warmup + a.rounds * (a.duration + 1) + 5
        log("%d conns: one %d s load per target, %d s warm-up, %d windows of %d s"
            % (conns, total, a.warmup, a.rounds, a.duration))
        procs = {n: spawn(["wrk", "-t1", "-c%d" % conns, "-d%ds" % total, "--timeout", "10s", "--latency", u])
                 for n, u in urls.items()}
        time.sleep(a.warmup)
        rounds = []
        for r in range(a.rounds):
            samplers = {n: RssSampler(roots[n], 0.2) for n in names}
            n0 = {n: served(counters[n]) for n in names}
            t0, c0, w0 = {n: cpu_ticks(proc_tree(roots[n])) for n in names}, cpu_busy(), time.monotonic()
            time.sleep(a.duration)
            n1 = {n: served(counters[n]) for n in names}
            t1, c1, w1 = {n: cpu_ticks(proc_tree(roots[n])) for n in names}, cpu_busy(), time.monotonic()
            res = {}
            for n in names:
                done = n1[n] - n0[n]
                res[n] = {"rps": done / (w1 - w0), "requests": done, "rss_peak_kib": samplers[n].stop(),
                          "cpu_us_per_req": (t1[n] - t0[n]) * 1e6 / CLK_TCK / max(1, done)}
            res["cpu_busy_pct"] = {c: 100.0 * (c1[c][0] - c0[c][0]) / max(1, c1[c][1] - c0[c][1]) for c in c1}
            rounds.append(res)
            log("%d conns, window %d/%d: %s" % (conns, r + 1, a.rounds,
                                               ", ".join("%s %.0f rps" % (n, res[n]["rps"]) for n in names)))
        for n, p in procs.items():  # latency and errors: over each whole load
            rc, out, err = collect(p, total + 60)
            try:
                w = parse_wrk(out)
            except AttributeError:
                raise RuntimeError("wrk against %s failed (rc %s): %s %s" % (n, rc, out[-400:], err[-400:]))
            if w["errors"]:
                log("%s: %d errors over the load: %s" % (n, w["errors"], w["error_kinds"]))
            for res in rounds:
                res[n].update(p50_ms=w["p50_ms"], p99_ms=w["p99_ms"], errors=w["errors"] if res is rounds[0] else 0)
        data[conns] = rounds
        text.append(summarize_throughput(a, conns, names, rounds, ref, twin)
                    .replace("%d x %d s rounds" % (a.rounds, a.duration),
                             "one load, %d windows of %d s after %d s" % (a.rounds, a.duration, a.warmup)))
    return data, text


def cmd_accesslog(a, st):
    """Access-log cost: data planes with the log off (twice: the A/A floor),
    JSON lines to a file, and to a pipe nobody reads (a stalled sink: lines
    dropped and counted), beside nginx with its buffered access_log
    (`buffer=64k`), all loaded at once."""
    st.upstream(a.body_size)
    routes = {"/": P["upstream"]}
    fifo = os.path.join(st.dir, "stalled.fifo")
    os.mkfifo(fifo)
    # The reader that never reads: the node's open succeeds, its writes
    # block once the pipe's 64 KiB are full.
    stalled_reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    json_log = os.path.join(st.dir, "log-json.access.log")
    nginx_log = os.path.join(st.dir, "nginx.access.log")
    on = lambda sink: {"API_PROXY_ACCESS_LOG": sink, "API_PROXY_ACCESS_LOG_FORMAT": "json"}  # noqa: E731
    roots = {"log-off": st.dataplane(routes, name="log-off", metrics="metrics-log-off").pid,
             "log-off-b": st.dataplane(routes, name="log-off-b", metrics="metrics-log-off-b").pid,
             "log-json": st.dataplane(routes, name="log-json", metrics="metrics-log-json",
                                      extra_env=on(json_log)).pid,
             "log-stalled": st.dataplane(routes, name="log-stalled", metrics="metrics-log-stalled",
                                         extra_env=on(fifo)).pid,
             "nginx-log": st.nginx_proxy("nginx-log", routes,
                                         server_extra="access_log %s combined buffer=64k;" % nginx_log).pid}
    data, text = measure(a, roots, "log-off", "log-off-b")
    for conns, rounds in data.items():
        ratios = [r["log-json"]["rps"] / r["nginx-log"]["rps"] for r in rounds]
        text.append("%d conns: log-json / nginx-log (buffered access_log) = %.3f (%.3f-%.3f), paired rounds"
                    % (conns, med(ratios), min(ratios), max(ratios)))
    time.sleep(1)  # the writer's last batch
    with open(json_log, "rb") as f:
        lines = sum(1 for _ in f)
    served_json = served("http://%s:%d/metrics" % (HOST, P["metrics-log-json"]))
    dropped = metric_sum(P["metrics-log-stalled"], "apiproxy_access_log_dropped_total")
    served_stalled = served("http://%s:%d/metrics" % (HOST, P["metrics-log-stalled"]))
    os.close(stalled_reader)
    text.append("log-json: %d lines in the file for %d requests served (%d dropped: %.0f)"
                % (lines, served_json, metric_sum(P["metrics-log-json"], "apiproxy_access_log_dropped_total"),
                   served_json - lines))
    text.append("log-stalled: %d of %d lines dropped (apiproxy_access_log_dropped_total)"
                % (dropped, served_stalled))
    for t in text[-3:]:
        log(t)
    save(a, "accesslog", data, "\n\n".join(text))


def cmd_stats(a, st):
    """Stats cost: a data plane recording and pushing every 2 s to a real
    control plane (over a real Redis) against identical ones with
    API_PROXY_ENABLE_STATS=false, all loaded at once."""
    st.upstream(a.body_size)
    routes = {"/": P["upstream"]}
    st.redis()
    st.controlplane()
    off = {"API_PROXY_ENABLE_STATS": "false"}
    roots = {"stats-off": st.dataplane(routes, name="stats-off", metrics="metrics-off", extra_env=off).pid,
             "stats-off-b": st.dataplane(routes, name="stats-off-b", metrics="metrics-off-b", extra_env=off).pid,
             "dataplane": st.dataplane(routes, extra_env={
                 "API_PROXY_CONTROLPLANE_URL": "http://%s:%d" % (HOST, P["controlplane"]),
                 "API_PROXY_NODE_TOKEN": NODE_TOKEN, "API_PROXY_NODE_ID": "bench",
                 "API_PROXY_STATS_INTERVAL": "2s"}).pid}
    data, text = measure(a, roots, "stats-off", "stats-off-b")
    # The pushes really happened and were applied: the cluster total.
    with urllib.request.urlopen("http://%s:%d/stats" % (HOST, P["controlplane"]), timeout=10) as r:
        total = json.load(r)["total"]
    pushed = "control plane /stats total after the run: %d requests (from the stats-on node)" % total
    log(pushed)
    text.append(pushed)
    save(a, "stats", data, "\n\n".join(text))


def metric_sum(port, name):
    """Sum of every sample of `name` on a data plane's /metrics."""
    with urllib.request.urlopen("http://%s:%d/metrics" % (HOST, port), timeout=10) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), text, re.M))


def cmd_outage(a, st):
    """Stats through a control-plane outage: a data plane under light load
    pushing every 200 ms to a real control plane that is killed (SIGKILL)
    for --outage seconds: its RSS over the outage (it keeps at most two
    batches), its failed pushes, and whether the cluster total is exact
    once a new control plane is up."""
    st.upstream(1024)
    st.redis()
    cp = st.controlplane()
    dp = st.dataplane({"/": P["upstream"]}, extra_env={
        "API_PROXY_CONTROLPLANE_URL": "http://%s:%d" % (HOST, P["controlplane"]),
        "API_PROXY_NODE_TOKEN": NODE_TOKEN, "API_PROXY_NODE_ID": "bench", "API_PROXY_STATS_INTERVAL": "200ms"})
    load = spawn(["wrk", "-t1", "-c%d" % a.conns, "-d%ds" % (a.warmup + a.outage), "--timeout", "10s",
                  "http://%s:%d/" % (HOST, P["dataplane"])])
    time.sleep(a.warmup)
    cp.kill()  # SIGKILL: no goodbye, the node's pushes start failing
    cp.wait(10)
    st.procs.remove(cp)
    before = rss_kib([dp.pid])
    failures_before = metric_sum(P["metrics"], "apiproxy_stats_push_failures_total")
    samples = []
    for _ in range(a.outage):
        time.sleep(1)
        samples.append(rss_kib([dp.pid]))
    rc, out, err = collect(load, 60)
    failures = metric_sum(P["metrics"], "apiproxy_stats_push_failures_total") - failures_before
    st.controlplane()
    served = metric_sum(P["metrics"], "apiproxy_requests_total")
    deadline, total = time.monotonic() + 15, None
    while time.monotonic() < deadline and total != served:
        time.sleep(0.2)
        with urllib.request.urlopen("http://%s:%d/stats" % (HOST, P["controlplane"]), timeout=10) as r:
            total = json.load(r)["total"]
    data = {"rss_before_kib": before, "rss_samples_kib": samples, "failed_pushes": failures,
            "served": served, "cluster_total": total, "wrk": parse_wrk(out) if rc == 0 else err[-400:]}
    text = ("== control-plane outage: %d s, wrk -c%d on one data plane pushing every 200 ms\n" % (a.outage, a.conns)
            + table(["RSS before MiB", "RSS max MiB", "growth KiB", "failed pushes", "served", "cluster total",
                     "exact"],
                    [["%.1f" % (before / 1024), "%.1f" % (max(samples) / 1024), max(samples) - before,
                      "%.0f" % failures, "%.0f" % served, total, "yes" if total == served else "NO"]]))
    save(a, "outage", data, text)


def summarize_throughput(a, conns, names, rounds, ref="nginx", twin="nginx-b"):
    rows = []
    for n in names:
        get = lambda k: [r[n][k] for r in rounds]  # noqa: E731
        ratios = [r[n]["rps"] / r[ref]["rps"] for r in rounds]  # paired: same round
        rows.append([n, "%.0f" % med(get("rps")), "%.2f" % med(get("p50_ms")), "%.2f" % med(get("p99_ms")),
                     "1 (ref)" if n == ref else "%.3f (%.3f-%.3f)" % (med(ratios), min(ratios), max(ratios)),
                     "%.1f" % med(get("cpu_us_per_req")), "%.1f" % (max(get("rss_peak_kib")) / 1024),
                     sum(get("errors"))])
    aa = [r[twin]["rps"] / r[ref]["rps"] for r in rounds]
    busy = {c: med([r["cpu_busy_pct"][c] for r in rounds]) for c in rounds[0]["cpu_busy_pct"]}
    warn = PIN and busy.get(int(PROXY_CPU), 100) < 95
    return ("== throughput: %d conns, %d x %d s rounds, all targets loaded at once, GET / (%d B body)\n"
            % (conns, a.rounds, a.duration, a.body_size)
            + table(["target", "rps(med)", "p50 ms", "p99 ms", "ratio/%s (min-max)" % ref, "cpu us/req",
                     "RSS peak MiB", "errors"], rows)
            + "\nA/A noise floor: %s/%s = %.3f (%.3f-%.3f) over %d rounds" % (twin, ref, med(aa), min(aa), max(aa), len(aa))
            + "\nCPU busy (median of rounds): " + ", ".join("cpu%d %.0f%%" % kv for kv in sorted(busy.items()))
            + ("  WARNING: proxy CPU not saturated, ratios are compressed" if warn else ""))


# ------------------------------------------------------------------ keys
ECHO_AUTH = "/_echo-authorization"  # the upstream answers the Authorization header it received


def cmd_keys(a, st):
    """Proxy keys: a keyed mapping with credential injection against open
    ones, all loaded at once (`load`) and under callgrind (`instr`); the
    memory a key takes in a node (`memory`)."""
    st.upstream(a.body_size, extra='location = %s { return 200 "$http_authorization"; }' % ECHO_AUTH)
    st.redis()
    data, text = {}, []
    for part in a.parts:
        data[part], t = {"load": keys_load, "instr": keys_instr, "memory": keys_memory}[part](a, st)
        text.append(t)
    save(a, "keys", data, "\n\n".join(text))


def api(method, path, body=None):
    """The control plane's admin API with the bearer token: the JSON answer."""
    req = urllib.request.Request("http://%s:%d%s" % (HOST, P["controlplane"], path), method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + ADMIN_TOKEN,
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise RuntimeError("%s %s: %d %s" % (method, path, e.code, e.read().decode()[:300]))


def fetch(port, path, headers=None):
    """GET on a fresh connection: (status, body text), errors included."""
    req = urllib.request.Request("http://%s:%d%s" % (HOST, port, path), headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_ready(metrics, timeout=60.0):
    """Polls a data plane's /readyz every 5 ms until 200: when it was (time.monotonic())."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if fetch(P[metrics], "/readyz")[0] == 200:
                return time.monotonic()
        except OSError:  # the metrics port is not listening yet
            pass
        time.sleep(0.005)
    raise RuntimeError("%s: not ready within %.0f s" % (metrics, timeout))


def expect(what, got, want):
    if got != want:
        raise RuntimeError("%s: got %r, want %r" % (what, got, want))
    return "%s: %s" % (what, got)


def keyed_setup(a, st):
    """The control plane (with a fresh API_PROXY_SECRETS_KEY, from its
    `gen-secrets-key`) and, through its API, the policy of `/` (access key,
    credential `Authorization: Bearer {secret}`), the mapping `/` to the
    upstream and a proxy key: (secrets key, credential, proxy key). Once a
    run."""
    if not hasattr(st, "keyed"):
        secrets_key = subprocess.run([cp_binary(a), "gen-secrets-key"], capture_output=True, text=True,
                                     check=True, timeout=10).stdout.strip()
        credential = "sk-bench-" + os.urandom(16).hex()
        st.controlplane({"API_PROXY_SECRETS_KEY": secrets_key})
        # The policy before the mapping, as the console makes them: "/" is never routed openly.
        api("PUT", "/api/policies/%2F", {"access": "key", "upstream_credential": {
            "header": "Authorization", "template": "Bearer {secret}", "secret": credential}})
        api("POST", "/api/mappings", {"prefix": "/", "target": "http://%s:%d" % (HOST, P["upstream"])})
        st.keyed = (secrets_key, credential, api("POST", "/api/keys", {"name": "bench"})["secret"])
    return st.keyed


def keyed_dataplane(st, secrets_key, wrap=()):
    """The keyed data plane (Redis mode, with the secrets key), once ready."""
    p = st.dataplane(None, wrap=wrap, name="keyed", metrics="metrics-keyed", extra_env={
        "API_PROXY_REDIS_URL": redis_url(), "API_PROXY_SECRETS_KEY": secrets_key,
        "API_PROXY_RESYNC_INTERVAL": "10m" if wrap else "10s"})  # callgrind: no re-read within a run
    wait_ready("metrics-keyed", 120.0 if wrap else 60.0)
    return p


def open_dataplane(st, name, metrics, wrap=()):
    """A data plane in Redis mode, as the keyed one, on a namespace of its
    own (`open`) whose mapping `/` has no policy: beside the keyed node,
    the difference is the gate, not the source of the mappings."""
    redis_cli("HSET", "open:mappings", "/", "http://%s:%d" % (HOST, P["upstream"]))
    p = st.dataplane(None, wrap=wrap, name=name, metrics=metrics, extra_env={
        "API_PROXY_REDIS_URL": redis_url(), "API_PROXY_REDIS_PREFIX": "open",
        "API_PROXY_RESYNC_INTERVAL": "10m" if wrap else "10s"})
    wait_ready(metrics, 120.0 if wrap else 60.0)
    return p


def keys_load(a, st):
    """Two open data planes (the reference and its A/A twin), a keyed one
    (policy, mapping and key made through the control plane's API) whose
    policy puts `Authorization: Bearer {secret}` upstream, all three in
    Redis mode, and nginx, loaded at once. Every target gets the same
    `Authorization: Bearer apx-…`: the keyed node checks it and swaps in
    the real credential, the others pass it on."""
    secrets_key, credential, proxy_key = keyed_setup(a, st)
    routes = {"/": P["upstream"]}
    roots = {"open": open_dataplane(st, "open", "metrics-open").pid,
             "open-b": open_dataplane(st, "open-b", "metrics-open-b").pid,
             "keyed": keyed_dataplane(st, secrets_key).pid,
             "nginx": st.nginx_proxy("nginx", routes).pid}
    bearer = {"Authorization": "Bearer " + proxy_key}
    # The set-up does what it must: no key, 401; the origin gets the real
    # credential from the keyed node and the client's header from an open one.
    checks = [expect("keyed, no key: status", fetch(P["keyed"], "/")[0], 401),
              expect("keyed, proxy key: Authorization at the origin",
                     fetch(P["keyed"], ECHO_AUTH, bearer), (200, "Bearer " + credential)),
              expect("open, proxy key: Authorization at the origin",
                     fetch(P["open"], ECHO_AUTH, bearer)[1], "Bearer " + proxy_key)]
    checks = [c.replace(credential, "sk-bench-…").replace(proxy_key, "apx-…") for c in checks]
    data, text = measure(a, roots, "open", "open-b", {n: ["Authorization: Bearer " + proxy_key] for n in roots})
    for conns, rounds in data.items():
        done, non2xx = sum(r["keyed"]["requests"] for r in rounds), sum(r["keyed"]["non2xx"] for r in rounds)
        text.append("%d conns: keyed served %d requests in the rounds, %d not 2xx (wrk)" % (conns, done, non2xx))
    text.append("every target: `Authorization: Bearer apx-…` from wrk; keyed: access key, credential "
                "`Authorization: Bearer {secret}`; open, open-b: no policy; all three in Redis mode\n"
                + "\n".join(checks))
    for t in text[-len(a.conns) - 1:]:
        log(t)
    for n in roots:
        st.stop(next(p for p in st.procs if p.pid == roots[n]))
    return {"rounds": data, "checks": checks}, "\n\n".join(text)


def keys_instr(a, st):
    """callgrind: instructions a request, an open data plane against the
    keyed one (both in Redis mode), both sent `Authorization: Bearer apx-…`."""
    secrets_key, _, proxy_key = keyed_setup(a, st)
    headers = ["Authorization: Bearer " + proxy_key]
    data = {"open": callgrind_per_request(a, st, "open", lambda wrap: open_dataplane(
        st, "open", "metrics-open", wrap), headers),
            "keyed": callgrind_per_request(a, st, "keyed", lambda wrap: keyed_dataplane(st, secrets_key, wrap),
                                           headers)}
    return data, instr_table(a, "GET / with `Authorization: Bearer apx-…`",
                             [instr_row(a, n, data[n], data["open"]) for n in data], "open")


def resp(*args):
    """One Redis command in RESP (what `redis-cli --pipe` reads)."""
    parts = [str(x).encode() if not isinstance(x, bytes) else x for x in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in parts)


def write_keys(namespace, n):
    """One keyed mapping `/` and n proxy keys in the control plane's records,
    written straight to Redis under `namespace` (replacing what it held)
    with `redis-cli --pipe`; the secret of one of the keys."""
    cmds = [resp("DEL", *(namespace + k for k in (":mappings", ":keys", ":keys:by-hash", ":policies"))),
            resp("HSET", namespace + ":mappings", "/", "http://%s:%d" % (HOST, P["upstream"])),
            resp("SET", namespace + ":mappings:version", 1),
            resp("HSET", namespace + ":policies", "/", json.dumps({"access": "key"}))]
    now, sample, batch = int(time.time()), None, ([], [])
    for i in range(n):
        secret = "apx-" + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        sha = hashlib.sha256(secret.encode()).hexdigest()
        key_id = "key_" + sha[:16]  # key_id_of: the hash's first 64 bits
        record = {"id": key_id, "name": "bench-%06d" % i, "prefixes": None, "enabled": True,
                  "expires_at": None, "created_at": now, "sha256": sha}
        batch[0].extend([key_id, json.dumps(record, separators=(",", ":"))])
        batch[1].extend([sha, key_id])
        sample = sample or secret
        if len(batch[0]) >= 2000 or i == n - 1:
            cmds += [resp("HSET", namespace + ":keys", *batch[0]),
                     resp("HSET", namespace + ":keys:by-hash", *batch[1])]
            batch = ([], [])
    redis_pipe(cmds)
    return sample


def redis_pipe(cmds):
    """Commands in RESP (resp()) sent with `redis-cli --pipe`; any error stops the run."""
    p = subprocess.run(["redis-cli", "-h", HOST, "-p", str(P["redis"]), "--pipe"], input=b"".join(cmds),
                       capture_output=True, timeout=120)
    if p.returncode != 0 or b"errors: 0," not in p.stdout:
        raise RuntimeError("redis-cli --pipe: %s %s" % (p.stdout[-300:], p.stderr[-300:]))


def redis_cli(*args):
    """One command with redis-cli: its answer as text."""
    return subprocess.run(["redis-cli", "-h", HOST, "-p", str(P["redis"])] + list(args),
                          capture_output=True, text=True, timeout=10, check=True).stdout


def redis_info(section):
    """`INFO section` as text."""
    return redis_cli("INFO", section)


def redis_calls(command):
    """Calls of `command` Redis has served so far (INFO commandstats)."""
    m = re.search(r"^cmdstat_%s:calls=(\d+)" % command, redis_info("commandstats"), re.M)
    return int(m.group(1)) if m else 0


PURGE = {"_RJEM_MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0"}  # jemalloc returns freed pages at once


def keys_memory(a, st):
    """One Redis-mode data plane at a time with the keyed mapping `/` and
    no keys, then --keys keys: the time from start to ready, RSS at ready
    and over a window of full re-reads (--resync s apart, idle), the
    re-reads' CPU; bytes a key = RSS difference / --keys. Each pair twice:
    with the build's allocator settings, and with jemalloc returning freed
    pages at once (`purge`), whose RSS is the memory the node really uses."""
    rows, res = [], {}
    window = 2 * a.resync + 2  # two re-reads or more, then jemalloc's 1 s decay
    build = dict(kv.split("=", 1) for kv in a.dp_env).get("_RJEM_MALLOC_CONF", "build")  # --dp-env may set it
    for alloc, env in ((build, {}), ("purge", PURGE)):
        for name, n in (("keys-none", 0), ("keys-many", a.keys)):
            namespace = "bench-" + name
            t = time.monotonic()
            sample = write_keys(namespace, n)
            log("%s: %d keys written to Redis in %.1f s" % (name, n, time.monotonic() - t))
            t0 = time.monotonic()
            proc = st.dataplane(None, name=name, metrics="metrics-" + name, extra_env=dict(env, **{
                "API_PROXY_REDIS_URL": redis_url(), "API_PROXY_REDIS_PREFIX": namespace,
                "API_PROXY_RESYNC_INTERVAL": "%ds" % a.resync}))
            ready_s = wait_ready("metrics-" + name) - t0
            at_ready = rss_kib([proc.pid])
            ticks, reads = cpu_ticks([proc.pid]), redis_calls("hgetall")
            samples = []
            for _ in range(int(window / 0.5)):
                time.sleep(0.5)
                samples.append(rss_kib([proc.pid]))
            ticks, reads = cpu_ticks([proc.pid]) - ticks, (redis_calls("hgetall") - reads) // 3  # 3 hashes a read
            peak = hwm_kib(proc.pid)
            gauge = metric_sum(P["metrics-" + name], "apiproxy_proxy_keys")
            with_key = fetch(P[name], "/", {"Authorization": "Bearer " + sample})[0] if sample else None
            unknown = fetch(P[name], "/", {"Authorization": "Bearer apx-" + "A" * 43})[0]
            if gauge != n or with_key not in (None, 200) or unknown != 401 or reads < 2:
                raise RuntimeError("%s: apiproxy_proxy_keys %s (want %d), a key's request %s, an unknown key's %s, "
                                   "%d full re-reads" % (name, gauge, n, with_key, unknown, reads))
            st.stop(proc)
            r = res["%s %s" % (name, alloc)] = {
                "keys": n, "ready_s": ready_s, "rss_ready_kib": at_ready, "rss_samples_kib": samples,
                "rss_peak_kib": peak, "rss_min_kib": min(samples), "rss_last_kib": samples[-1],
                "rereads": reads, "cpu_ms_per_reread": ticks * 1000.0 / CLK_TCK / max(1, reads)}
            rows.append([name, alloc, n, "%.0f" % (ready_s * 1000)]
                        + ["%.1f" % (r[k] / 1024.0) for k in ("rss_ready_kib", "rss_peak_kib", "rss_min_kib",
                                                             "rss_last_kib")]
                        + [reads, "%.0f" % r["cpu_ms_per_reread"]])
    lines = []
    for alloc in (build, "purge"):
        base, big = res["keys-none " + alloc], res["keys-many " + alloc]
        per_key = res["bytes_per_key " + alloc] = {
            k: (big[k] - base[k]) * 1024.0 / a.keys for k in ("rss_ready_kib", "rss_peak_kib", "rss_min_kib",
                                                               "rss_last_kib")}
        lines.append("bytes a key (RSS difference / %d), %s: %.0f at ready, %.0f at the peak, %.0f at the least, "
                     "%.0f last" % (a.keys, alloc, per_key["rss_ready_kib"], per_key["rss_peak_kib"],
                                    per_key["rss_min_kib"], per_key["rss_last_kib"]))
    text = ("== keys memory: a Redis-mode data plane with one keyed mapping and 0 or %d proxy keys (records "
            "written straight to Redis), one node at a time, idle; RSS at ready, then every 0.5 s for %d s of "
            "full re-reads %d s apart, peak = VmHWM; allocator: build = the build's jemalloc settings, otherwise "
            "_RJEM_MALLOC_CONF (purge: %s)\n" % (a.keys, window, a.resync, PURGE["_RJEM_MALLOC_CONF"])
            + table(["node", "allocator", "keys", "start->ready ms", "RSS ready MiB", "peak MiB", "least MiB",
                     "last MiB", "re-reads", "cpu ms/re-read"], rows)
            + "\n" + "\n".join(lines))
    for line in lines:
        log(line)
    return res, text


# ------------------------------------------------------------------ fleet
FLEET_PORT, FLEET_METRICS_PORT = 20000, 21000  # + node index (+ --port-offset): below Linux's ephemeral ports
FLEET_NS, BASE_NS, BASE_MAPPINGS = "apiproxy", "fleet-base", 10
FLEET_LOG = "warn,apiproxy_dataplane::redis_source=debug"  # the applied versions, nothing else


def cmd_fleet(a, st):
    """N Redis-mode data planes (stats off, one worker each) on one Redis
    with M mappings, beside a control plane: the time until every node is
    ready, RSS a node and bytes a mapping, the propagation of K changes made
    through the API (from the nodes' own log timestamps), and the CPU of
    Redis and of the nodes over an idle window."""
    redis = st.redis()
    t = time.monotonic()
    write_mappings(FLEET_NS, a.mappings)
    write_mappings(BASE_NS, BASE_MAPPINGS)
    log("%d + %d mappings written to Redis in %.1f s" % (a.mappings, BASE_MAPPINGS, time.monotonic() - t))
    cp = st.controlplane({"API_PROXY_RESYNC_INTERVAL": a.resync} if a.resync else {})
    data = {"solo": {n: fleet_solo(a, st, n, ns, m)
                     for n, ns, m in (("fleet-base", BASE_NS, BASE_MAPPINGS), ("fleet-solo", FLEET_NS, a.mappings))}}
    nodes, t0 = [], time.monotonic()
    for i in range(a.nodes):
        nodes.append(st.dataplane(None, name="fleet-%d" % i, metrics="fleet-metrics-%d" % i, cpu=a.node_cpus,
                                  extra_env=fleet_env(a, FLEET_NS), wait_listen=False))
    launched = time.monotonic() - t0
    ready = wait_nodes_ready(st, nodes, ["fleet-metrics-%d" % i for i in range(a.nodes)], t0, a.ready_timeout)
    log("%d nodes started in %.2f s, all ready %.2f s after the first started" % (a.nodes, launched, max(ready)))
    rss = {"ready": [rss_kib([p.pid]) for p in nodes]}
    changes = fleet_changes(a)
    versions = fleet_converge(a, changes[-1]["version"])
    rss["changes"] = [rss_kib([p.pid]) for p in nodes]
    new_prefix = next(c["path"] for c in reversed(changes) if c["op"] == "POST")
    routed = sum(fetch(P["fleet-%d" % i], new_prefix)[0] != 404 for i in range(a.nodes))
    prop = fleet_propagation(st, nodes, changes)
    idle = fleet_idle(a, redis, cp, nodes)
    rss["idle"] = [rss_kib([p.pid]) for p in nodes]
    st.stop_many(nodes)
    data.update({"nodes": a.nodes, "mappings": a.mappings, "launch_s": launched, "ready_s": ready,
                 "rss_kib": rss, "changes": changes, "versions": versions,
                 "routed_new_prefix": routed, "propagation": prop, "idle": idle})
    save(a, "fleet", data, fleet_text(a, data))


def fleet_env(a, namespace):
    """A fleet node: Redis mode, stats off, JSON logs with the applied versions."""
    return dict({"API_PROXY_REDIS_URL": redis_url(), "API_PROXY_REDIS_PREFIX": namespace,
                 "API_PROXY_ENABLE_STATS": "false", "API_PROXY_LOG_FORMAT": "json", "RUST_LOG": FLEET_LOG},
                **({"API_PROXY_RESYNC_INTERVAL": a.resync} if a.resync else {}))


def write_mappings(namespace, n):
    """n mappings `/svc-000000` … (targets on the upstream port, which
    nothing serves here) straight into `{namespace}:mappings`, replacing
    it, then the version bumped and a full re-read announced, as a
    replace-all does it."""
    cmds, batch = [resp("DEL", namespace + ":mappings")], []
    for i in range(n):
        batch += ["/svc-%06d" % i, "http://%s:%d/v/%d" % (HOST, P["upstream"], i)]
        if len(batch) >= 2000 or i == n - 1:
            cmds.append(resp("HSET", namespace + ":mappings", *batch))
            batch = []
    redis_pipe(cmds)
    version = int(redis_cli("INCR", namespace + ":mappings:version"))
    redis_cli("PUBLISH", namespace + ":mappings:updates", json.dumps({"version": version, "op": "replace"}))


def fleet_solo(a, st, name, namespace, mappings):
    """One node alone with `mappings` mappings: start -> ready, RSS at ready and 3 s later."""
    t0 = time.monotonic()
    p = st.dataplane(None, name=name, metrics="metrics-" + name, cpu=a.node_cpus,
                     extra_env=fleet_env(a, namespace), wait_listen=False)
    ready = wait_nodes_ready(st, [p], ["metrics-" + name], t0, a.ready_timeout)[0]
    at_ready = rss_kib([p.pid])
    time.sleep(3)  # past jemalloc's decay of the pages the boot freed
    r = {"mappings": mappings, "ready_s": ready, "rss_ready_kib": at_ready, "rss_settled_kib": rss_kib([p.pid])}
    st.stop(p)
    log("%s: %d mappings, ready in %.0f ms, RSS %.1f MiB" % (name, mappings, ready * 1000, at_ready / 1024))
    return r


def wait_nodes_ready(st, nodes, metrics, t0, timeout):
    """Polls every node's /readyz (metrics: their ports' names) every 5 ms,
    a thread a node, until each answered 200: each node's time from t0 to
    its first 200. A node that exits stops the run."""
    at, errors = {}, []

    def poll(i):
        try:
            at[i] = wait_ready(metrics[i], t0 + timeout - time.monotonic()) - t0
        except RuntimeError as e:
            errors.append(e)

    threads = [threading.Thread(target=poll, args=(i,), daemon=True) for i in range(len(nodes))]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) and not errors:
        for p in nodes:
            if p.poll() is not None:
                raise RuntimeError("%s exited (rc %s): see %s" % (p.name, p.returncode, st.log_path(p.name)))
        time.sleep(0.05)
    if errors or len(at) < len(nodes):
        raise RuntimeError("%d of %d nodes not ready %.0f s after the start: %s"
                           % (len(nodes) - len(at), len(nodes), timeout, errors[:1]))
    return [at[i] for i in range(len(nodes))]


def fleet_changes(a):
    """K changes through the control plane's API, one at a time, --spacing
    ms apart: even ones create a mapping, odd ones replace the target of
    an existing one. Each: its version and the wall-clock time just before
    the call (the clock the nodes' log timestamps use)."""
    changes = []
    for i in range(a.changes):
        target = "http://%s:%d/change/%d" % (HOST, P["upstream"], i)
        if i % 2 == 0:
            prefix = "/fleet-change-%05d" % i
            req = ("POST", "/api/mappings", {"prefix": prefix, "target": target})
        else:
            prefix = "/svc-%06d" % (i % a.mappings)
            req = ("PUT", "/api/mappings" + prefix, {"target": target})
        t = time.time()
        version = api(*req)["version"]
        changes.append({"op": req[0], "path": prefix, "version": version, "t_call": t,
                        "api_ms": (time.time() - t) * 1000})
        time.sleep(a.spacing / 1000.0)
    log("%d changes made through the API, versions %d..%d" % (a.changes, changes[0]["version"],
                                                               changes[-1]["version"]))
    return changes


def fleet_versions(n):
    """Each fleet node's served version (apiproxy_config_version)."""
    return [int(metric_sum(P["fleet-metrics-%d" % i], "apiproxy_config_version")) for i in range(n)]


def fleet_converge(a, version, timeout=30.0):
    """Waits (at most `timeout` s) until every node serves `version`: the versions last seen."""
    deadline = time.monotonic() + timeout
    while True:
        versions = fleet_versions(a.nodes)
        if min(versions) >= version or time.monotonic() > deadline:
            return versions
        time.sleep(0.1)


def applied_versions(path):
    """(version, unix time, message) of every version a node's JSON log says
    it applied (redis_source's debug events `applying …` with a `version`),
    in log order; and the digits of the timestamps' fraction of a second."""
    out, digits = [], None
    with open(path, errors="replace") as f:
        for line in f:
            if '"version"' not in line:
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if str(e.get("message", "")).startswith("applying") and "version" in e:
                ts = e["timestamp"]
                if digits is None:
                    frac = re.search(r"\.(\d+)", ts)
                    digits = len(frac.group(1)) if frac else 0
                out.append((int(e["version"]), datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp(),
                            e["message"]))
    return out, digits


def fleet_propagation(st, nodes, changes):
    """For each (node, change): from just before the API call to the node's
    log timestamp of the first version ≥ the change's that it applied
    (a later version carries the change too), and how it got there: the
    announced change of that very version (as announced, or from a
    one-field read), a full re-read at it, or a later version."""
    lat, per_change, how, missing, digits = [], [[] for _ in changes], {}, 0, set()
    for p in nodes:
        entries, d = applied_versions(st.log_path(p.name))
        digits.add(d)
        for j, c in enumerate(changes):
            hit = next(((v, ts, msg) for v, ts, msg in entries if v >= c["version"]), None)
            if hit is None:
                missing += 1
                continue
            ms = (hit[1] - c["t_call"]) * 1000
            lat.append(ms)
            per_change[j].append(ms)
            kind = ("later version" if hit[0] > c["version"] else
                    "announced change" if hit[2] == "applying one announced change" else "full re-read")
            how[kind] = how.get(kind, 0) + 1
    fleet = [max(v) for v in per_change if len(v) == len(nodes)]
    return {"pairs": len(nodes) * len(changes), "missing": missing, "latency_ms": lat, "how": how,
            "fleet_ms": fleet, "timestamp_digits": sorted(d for d in digits if d is not None)}


def commandstats():
    """{command: calls} from INFO commandstats."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^cmdstat_(\S+?):calls=(\d+)",
                                                              redis_info("commandstats"), re.M)}


def info_field(section, field):
    m = re.search(r"^%s:([\d.]+)" % field, redis_info(section), re.M)
    return float(m.group(1)) if m else 0.0


def redis_cpu_s():
    """Redis's own CPU seconds (INFO cpu, from getrusage: microseconds)."""
    return info_field("cpu", "used_cpu_sys") + info_field("cpu", "used_cpu_user")


def fleet_idle(a, redis, cp, nodes):
    """--idle seconds with no change: CPU (utime + stime from /proc, as % of
    one core) of Redis, the control plane and each node; Redis's commands
    and bytes out a second."""
    time.sleep(1)  # the last change settled
    procs = {"redis": redis, "controlplane": cp}
    ticks = {n: cpu_ticks([p.pid]) for n, p in procs.items()}
    node_ticks = [cpu_ticks([p.pid]) for p in nodes]
    calls, out_bytes, own = commandstats(), info_field("stats", "total_net_output_bytes"), redis_cpu_s()
    t0 = time.monotonic()
    time.sleep(a.idle)
    secs = time.monotonic() - t0
    pct_of = lambda d: d * 100.0 / CLK_TCK / secs  # noqa: E731
    res = {n: pct_of(cpu_ticks([p.pid]) - ticks[n]) for n, p in procs.items()}
    res["nodes"] = [pct_of(cpu_ticks([p.pid]) - t) for p, t in zip(nodes, node_ticks)]
    res["redis_info_cpu"] = (redis_cpu_s() - own) * 100.0 / secs
    res["redis_out_bytes_per_s"] = (info_field("stats", "total_net_output_bytes") - out_bytes) / secs
    after = commandstats()  # the harness's own INFO calls left out
    res["redis_calls_per_s"] = {c: (n - calls.get(c, 0)) / secs for c, n in after.items()
                                if n > calls.get(c, 0) and c != "info"}
    res["window_s"] = secs
    return res


def fleet_text(a, d):
    mib = lambda kib: "%.1f" % (kib / 1024.0)  # noqa: E731
    base, solo = d["solo"]["fleet-base"], d["solo"]["fleet-solo"]
    rss = d["rss_kib"]
    rows = [[n, r["mappings"], "%.0f" % (r["ready_s"] * 1000), mib(r["rss_ready_kib"]), mib(r["rss_settled_kib"]),
             "-"] for n, r in d["solo"].items()]
    for f, pick in (("median", med), ("max", max)):
        rows.append(["fleet %s (%d nodes)" % (f, a.nodes), a.mappings, "%.0f" % (pick(d["ready_s"]) * 1000)]
                    + [mib(pick(rss[k])) for k in ("ready", "changes", "idle")])
    per_mapping = ["%.0f" % ((x - base["rss_settled_kib"]) * 1024.0 / (a.mappings - BASE_MAPPINGS))
                   if a.mappings > BASE_MAPPINGS else "n/a" for x in (solo["rss_settled_kib"], med(rss["idle"]))]
    p = d["propagation"]
    lat = p["latency_ms"]
    digits = p["timestamp_digits"]
    precision = {6: "µs", 3: "ms", 9: "ns"}.get(max(digits) if digits else 0, "%s digits" % digits)
    conv = sum(v >= d["changes"][-1]["version"] for v in d["versions"])
    api_ms = [c["api_ms"] for c in d["changes"]]
    idle = d["idle"]
    calls = sorted(idle["redis_calls_per_s"].items(), key=lambda kv: -kv[1])
    return "\n".join([
        "== fleet: %d data planes (Redis mode, stats off, 1 worker, CPUs %s) on one Redis, %d mappings, resync %s"
        % (a.nodes, a.node_cpus or "all", a.mappings, a.resync or "default"),
        table(["node(s)", "mappings", "start->ready ms", "RSS ready MiB", "3 s later / after changes MiB",
               "after idle MiB"], rows),
        "fleet: %d nodes launched in %.2f s; every node ready %.2f s after the first was started (/readyz "
        "polled every 5 ms)" % (a.nodes, d["launch_s"], max(d["ready_s"])),
        "bytes a mapping (RSS 3 s after ready minus fleet-base's, / (%d - %d)): solo %s; fleet median after idle %s"
        % (a.mappings, BASE_MAPPINGS, per_mapping[0], per_mapping[1]),
        "",
        "== propagation: %d changes through the API (POST/PUT alternating, %d ms apart), API call -> the node's "
        "log timestamp of applying it (timestamps in %s)" % (a.changes, a.spacing, precision),
        table(["pairs", "timed", "p50 ms", "p90 ms", "p99 ms", "max ms", "fleet p50 ms", "fleet max ms",
               "API p50 ms"],
              [[p["pairs"], len(lat)] + ["%.2f" % pct(lat, q) for q in (50, 90, 99)] + ["%.2f" % max(lat or [0])]
               + ["%.2f" % pct(p["fleet_ms"], 50), "%.2f" % max(p["fleet_ms"] or [0]), "%.2f" % med(api_ms)]]),
        "applied by: " + ", ".join("%s %d" % kv for kv in sorted(p["how"].items()))
        + "; (node, change) pairs never logged: %d" % p["missing"],
        "converged: %d/%d nodes serve the last version (%d); the last new prefix routes on %d/%d nodes; %s"
        % (conv, a.nodes, d["changes"][-1]["version"], d["routed_new_prefix"], a.nodes,
           "every node applied every change" if conv == a.nodes and p["missing"] == 0 else "NOT CONVERGED"),
        "",
        "== idle: %.0f s without changes, CPU %% of one core (utime + stime from /proc)" % idle["window_s"],
        table(["redis", "redis (INFO cpu)", "controlplane", "node median", "node max", "nodes sum",
               "redis out KiB/s"],
              [["%.2f" % x for x in (idle["redis"], idle["redis_info_cpu"], idle["controlplane"], med(idle["nodes"]),
                                     max(idle["nodes"]), sum(idle["nodes"]))]
               + ["%.1f" % (idle["redis_out_bytes_per_s"] / 1024)]]),
        "redis per node: %.3f %% of a core, %.1f KiB/s out; x1000 nodes (linear, fixed costs included): %.1f %%, "
        "%.1f MiB/s" % (idle["redis"] / a.nodes, idle["redis_out_bytes_per_s"] / 1024 / a.nodes,
                        idle["redis"] * 1000 / a.nodes, idle["redis_out_bytes_per_s"] * 1000 / a.nodes / 2**20),
        "redis calls/s: " + (", ".join("%s %.1f" % kv for kv in calls[:6]) or "none"),
    ])


# ------------------------------------------------------------------ stream
def big_file(mib):
    os.makedirs(CACHE, exist_ok=True)
    os.chmod(CACHE, 0o755)
    path = os.path.join(CACHE, "zero-%dmib.bin" % mib)
    if not (os.path.exists(path) and os.path.getsize(path) == mib << 20):
        log("creating " + path)
        with open(path + ".tmp", "wb") as f:
            for _ in range(mib):
                f.write(bytes(1 << 20))
        os.replace(path + ".tmp", path)
    os.chmod(path, 0o644)
    return path


def curl_transfer(url, upload, size, resp):
    """Download (upload=None) or POST the file `upload`; returns MiB/s."""
    argv = ["curl", "-sS", "--max-time", "600", "-o", resp, "-w", "%{http_code} %{size_upload} "
            "%{size_download} %{time_total}"]
    if upload:  # -T streams the file with a Content-Length; an empty Expect: skips 100-continue
        argv += ["-X", "POST", "-T", upload, "-H", "Expect:", "-H", "Content-Type: application/octet-stream"]
    rc, out, err = collect(spawn(argv + [url]), 660)
    code, up, down, secs = out.split() if rc == 0 else ("curl rc %d" % rc, 0, 0, 1)
    moved = int(float(up if upload else down))
    if code != "200" or moved != size:
        raise RuntimeError("%s: status %s, %s of %d bytes %s" % (url, code, moved, size, err.strip()))
    if upload:
        with open(resp) as f:
            got = int(f.read().split()[0])  # the sink answers with the byte count it received
        if got != size:
            raise RuntimeError("%s: the sink received %d of %d bytes" % (url, got, size))
    return size / float(secs) / (1 << 20)


def cmd_stream(a, st):
    path, size = big_file(a.size_mib), a.size_mib << 20
    st.upstream(big=path)
    st.helper("sink")
    routes = {"/": P["upstream"], "/sink": P["sink"]}
    roots = {"direct": None, "nginx": st.nginx_proxy("nginx", routes).pid}
    if a.nginx_buffer:
        roots["nginx-buf"] = st.nginx_proxy("nginx-buf", routes, buffer_size=a.nginx_buffer).pid
    if not a.skip_dataplane:
        roots["dataplane"] = st.dataplane(routes).pid
    label = {"nginx-buf": "nginx buffer %s" % a.nginx_buffer}
    rows, data = [], []
    for direction in ("download", "upload"):
        for n, root in roots.items():
            port = P[n] if root else P["upstream" if direction == "download" else "sink"]
            url = "http://%s:%d%s" % (HOST, port, "/big" if direction == "download" else "/sink")
            s = RssSampler(root, 0.05) if root else None
            mibs = curl_transfer(url, path if direction == "upload" else None, size, os.path.join(st.dir, "resp"))
            r = {"target": n, "direction": direction, "mib_per_s": mibs}
            mem = ["-", "-", "-"]
            if s:
                s.stop()
                r.update(rss_before_kib=s.first, rss_peak_kib=s.peak)
                mem = ["%.1f" % (s.first / 1024), "%.1f" % (s.peak / 1024), "%+.1f" % ((s.peak - s.first) / 1024)]
            data.append(r)
            rows.append([direction, label.get(n, n), "%.0f" % mibs] + mem)
            log("%s via %s: %.0f MiB/s" % (direction, n, mibs))
    save(a, "stream", data, "== stream: %d MiB body, one transfer at a time (curl), RSS sampled every 50 ms\n"
         % a.size_mib + table(["direction", "target", "MiB/s", "RSS before MiB", "RSS peak MiB", "growth MiB"], rows))


async def sink_conn(loop, conn):
    """Upload sink, one connection: for each request, discard the body
    (Content-Length or chunked) and answer 200 with the number of bytes."""
    buf, pend = bytearray(256 << 10), bytearray()
    view = memoryview(buf)

    async def line():
        while b"\r\n" not in pend:
            if len(pend) > 65536:
                raise ValueError("line too long")
            n = await loop.sock_recv_into(conn, view)
            if not n:
                raise EOFError
            pend.extend(view[:n])
        ln, _, rest = bytes(pend).partition(b"\r\n")
        pend[:] = rest
        return ln

    async def skip(n):  # already-buffered bytes first, then 256 KiB reads
        k = min(n, len(pend))
        del pend[:k]
        n -= k
        while n > 0:
            got = await loop.sock_recv_into(conn, view[:min(n, len(buf))])
            if not got:
                raise EOFError
            n -= got

    try:
        while True:
            head = [await line()]
            while head[-1]:
                head.append(await line())
            h = b"\n".join(head).lower()
            if b"expect: 100-continue" in h:
                await loop.sock_sendall(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
            got = 0
            if b"transfer-encoding: chunked" in h:
                for _ in range(1 << 40):
                    n = int((await line()).split(b";")[0], 16)
                    if n == 0:
                        while await line():  # trailers
                            pass
                        break
                    await skip(n + 2)  # data + CRLF
                    got += n
            else:
                m = re.search(rb"content-length:\s*(\d+)", h)
                got = int(m.group(1)) if m else 0
                await skip(got)
            body = b"%d\n" % got
            await loop.sock_sendall(conn, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    except (EOFError, ConnectionError, ValueError):
        pass
    finally:
        conn.close()


async def serve_sink(port):
    loop = asyncio.get_running_loop()
    ls = socket.create_server((HOST, port), backlog=512, reuse_port=False)
    ls.setblocking(False)
    while True:
        conn, _ = await loop.sock_accept(ls)
        conn.setblocking(False)
        loop.create_task(sink_conn(loop, conn))


# ------------------------------------------------------------------ sse
async def sse_origin_conn(reader, writer):
    """SSE origin: GET <any path>?n=N&gap_ms=G -> chunked text/event-stream with
    N events G ms apart, each `data: {"i": k, "t": CLOCK_MONOTONIC ns at send}`."""
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:  # keep-alive: proxies reuse upstream connections
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            q = dict(re.findall(r"[?&](\w+)=(\d+)", head.split("\r\n")[0]))
            n, gap = min(int(q.get("n", 10)), 100000), int(q.get("gap_ms", 20)) / 1000.0
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            for i in range(n):
                await asyncio.sleep(gap)
                ev = b'data: {"i":%d,"t":%d}\n\n' % (i, time.monotonic_ns())
                writer.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve_sse(port):
    async with await asyncio.start_server(sse_origin_conn, HOST, port, backlog=512) as srv:
        await srv.serve_forever()


class Dechunk:
    """Incremental decoder of a chunked HTTP/1.1 body: feed(bytes) -> data bytes."""

    def __init__(self):
        self.buf, self.left, self.done = b"", 0, False  # left: data + CRLF still due

    def feed(self, data):
        self.buf += data
        out = []
        while not self.done:
            if self.left:
                piece = self.buf[:self.left]
                out.append(piece[:max(0, self.left - 2)])  # the last 2 bytes due are the CRLF
                self.buf, self.left = self.buf[len(piece):], self.left - len(piece)
                if self.left:
                    break
            k = self.buf.find(b"\r\n")
            if k < 0:
                break
            size = int(self.buf[:k].split(b";")[0], 16)
            self.buf, self.left, self.done = self.buf[k + 2:], size + 2, size == 0
        return b"".join(out)


async def sse_client(port, path, timeout, delay):
    """One stream on a fresh connection, opened after `delay` s; returns each event's lag in ms."""
    await asyncio.sleep(delay)
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
                 % (path.encode(), HOST.encode(), port))
    head, dec, events, lags = b"", None, b"", []
    deadline = time.monotonic() + timeout
    try:
        while not (dec and dec.done):
            data = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.monotonic()))
            now = time.monotonic_ns()
            if not data:
                break
            if dec is None:
                head += data
                if b"\r\n\r\n" not in head:
                    continue
                h, _, data = head.partition(b"\r\n\r\n")
                if not h.startswith(b"HTTP/1.1 200") or b"transfer-encoding: chunked" not in h.lower():
                    raise RuntimeError("port %d: unexpected response head %r" % (port, h[:300]))
                dec = Dechunk()
            events += dec.feed(data)
            while b"\n\n" in events:
                ev, _, events = events.partition(b"\n\n")
                if ev.startswith(b"data: "):
                    lags.append((now - json.loads(ev[6:])["t"]) / 1e6)
    finally:
        writer.close()
    return lags


def cmd_sse(a, st):
    st.helper("sse")
    routes = {"/": P["upstream"], "/sse": P["sse"]}  # nothing is sent to "/" here
    st.nginx_proxy("nginx", routes)
    ports = {"direct": P["sse"], "nginx": P["nginx"]}
    if not a.skip_dataplane:
        st.dataplane(routes)
        ports["dataplane"] = P["dataplane"]

    async def streams(port, n, events, gap_ms):
        # start times spread over one gap, so the streams' events do not all fall due at once
        path, timeout = "/sse?n=%d&gap_ms=%d" % (events, gap_ms), events * gap_ms / 1000.0 + 15
        return await asyncio.gather(*[sse_client(port, path, timeout, k * gap_ms / 1000.0 / n) for k in range(n)])

    data, rows = {}, []
    for name, port in ports.items():  # one target at a time
        asyncio.run(streams(port, 2, 2, 1))  # warm-up: upstream connections, first-use costs
        lags = [x for s in asyncio.run(streams(port, a.streams, a.events, a.gap_ms)) for x in s]
        if len(lags) != a.streams * a.events:
            raise RuntimeError("%s: got %d of %d events" % (name, len(lags), a.streams * a.events))
        d = data[name] = {"p50_ms": med(lags), "p99_ms": pct(lags, 99), "max_ms": max(lags), "lags_ms": lags}
        added = lambda k: "-" if name == "direct" else "%+.3f" % (d[k] - data["direct"][k])  # noqa: E731
        rows.append([name, len(lags), "%.3f" % d["p50_ms"], "%.3f" % d["p99_ms"], "%.3f" % d["max_ms"],
                     added("p50_ms"), added("p99_ms")])
    save(a, "sse", data, "== sse: %d concurrent streams x %d events, %d ms apart; lag = receive - send time\n"
         % (a.streams, a.events, a.gap_ms)
         + table(["target", "events", "lag p50 ms", "lag p99 ms", "max ms", "added p50", "added p99"], rows))


# ------------------------------------------------------------------ instr
def callgrind_total(path):
    with open(path) as f:
        for ln in f:
            if ln.startswith(("summary:", "totals:")):
                return int(ln.split()[1])
    raise RuntimeError("no summary:/totals: line in " + path)


def cmd_instr(a, st):
    """Ir(n2) - Ir(n1) cancels start-up, shutdown and connection set-up costs."""
    st.upstream()
    routes = {"/": P["upstream"]}
    data, rows = {}, []
    for name in ["nginx"] + ([] if a.skip_dataplane else ["dataplane"]):
        data[name] = callgrind_per_request(a, st, name, lambda wrap: (
            st.nginx_proxy(name, routes, wrap=wrap, extra_g=" master_process off;") if name == "nginx"
            else st.dataplane(routes, wrap=wrap)))
        rows.append(instr_row(a, name, data[name], data["nginx"]))
    save(a, "instr", data, instr_table(a, "GET /", rows, "nginx"))


def callgrind_per_request(a, st, name, start, headers=()):
    """Runs the proxy `start(wrap)` starts (target `name`) under callgrind
    twice, driven by `h2load --h1 -c 8` with --n1 and --n2 requests (and
    `headers`): Ir and Ir a request."""
    ir = {}
    for n in (a.n1, a.n2):
        out = os.path.join(st.dir, "callgrind.%s.%d" % (name, n))
        log("%s under callgrind: %d requests" % (name, n))
        p = start(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out])
        try:
            rc, so, se = collect(spawn(["h2load", "--h1", "-n", str(n), "-c", "8", "-t", "1"]
                                       + [x for h in headers for x in ("-H", h)]
                                       + ["http://%s:%d/" % (HOST, P[name])]), 900)
            if not re.search(r"requests: %d total.* %d succeeded" % (n, n), so) or \
                    not re.search(r"status codes: %d 2xx" % n, so):
                raise RuntimeError("h2load against %s: %s %s" % (name, so[-600:], se[-300:]))
        finally:
            st.stop(p, timeout=120)  # callgrind writes its file when the process exits
        ir[n] = callgrind_total(out)
    return {"ir": ir, "ir_per_req": (ir[a.n2] - ir[a.n1]) / float(a.n2 - a.n1)}


def instr_row(a, name, d, ref):
    return [name, d["ir"][a.n1], d["ir"][a.n2], "%.0f" % d["ir_per_req"],
            "%.3f" % (d["ir_per_req"] / ref["ir_per_req"])]


def instr_table(a, what, rows, ref):
    return ("== instr: callgrind user-space instructions per request, %s, h2load --h1 -c 8\n"
            "Ir/req = (Ir(n=%d) - Ir(n=%d)) / %d; kernel work (syscalls, TCP) is not counted\n"
            % (what, a.n2, a.n1, a.n2 - a.n1)
            + table(["target", "Ir(n=%d)" % a.n1, "Ir(n=%d)" % a.n2, "Ir/req", "ratio/" + ref], rows))


# ------------------------------------------------------------------ h2 (TLS and HTTP/2 upstreams)
def cmd_h2(a, st):
    """The path production traffic takes: TLS to the origin, HTTP/2 where it
    offers it. Parts (--parts): slow, burst, tls, sse, chat."""
    if a.skip_dataplane:
        raise SystemExit("h2: the data plane is what is measured here")
    data, text = {}, []
    st.origin("origin", "--body-bytes", 1024, "--events", a.sse_events, "--gap-ms", a.sse_gap_ms,
              "--max-streams", a.max_streams)
    st.origin("origin-h1", "--alpn", "http/1.1", "--body-bytes", 1024, "--events", a.sse_events,
              "--gap-ms", a.sse_gap_ms)
    for part in a.parts:
        log("h2: part %s" % part)
        d, t = {"slow": h2_slow, "burst": h2_burst, "tls": h2_tls, "sse": h2_sse, "chat": h2_chat}[part](a, st)
        data[part], text = d, text + [t]
        print(t + "\n", flush=True)
    save(a, "h2", data, "\n\n".join(text))


def h2_slow(a, st):
    """400 clients, an origin taking 1 s an answer (128 streams a connection,
    nginx's default): the data plane over h2 against nginx over TLS h1, loaded at once."""
    st.origin("origin-slow", "--delay-ms", 1000, "--max-streams", a.max_streams)
    roots = {"nginx": st.nginx_tls_proxy("nginx", P["origin-slow"]).pid,
             "dp-h2": st.dataplane_tls("dp-h2", "metrics-h2", P["origin-slow"]).pid}
    urls = {n: "http://%s:%d/slow" % (HOST, P[n]) for n in roots}
    before = origin_stats(P["origin-slow"])
    t0 = {n: cpu_ticks(proc_tree(r)) for n, r in roots.items()}
    res = wrk_all(urls, a.slow_clients, a.slow_duration)
    after = origin_stats(P["origin-slow"])
    rows = []
    for n in roots:
        res[n]["cpu_us_per_req"] = (cpu_ticks(proc_tree(roots[n])) - t0[n]) * 1e6 / CLK_TCK / max(1, res[n]["requests"])
        rows.append([n, "%.0f" % res[n]["rps"], "%.3f" % (res[n]["rps"] / res["nginx"]["rps"]),
                     "%.0f" % res[n]["p50_ms"], "%.0f" % res[n]["p99_ms"], res[n]["errors"]])
    res["origin_connections"] = after["connections"] - before["connections"]
    for n in roots:
        st.stop(next(p for p in st.procs if p.pid == roots[n]))
    return res, ("== h2 slow: %d clients each, %d s, origin answers after 1 s (%d streams a connection); "
                 "both proxies loaded at once\n" % (a.slow_clients, a.slow_duration, a.max_streams)
                 + table(["target", "rps", "ratio/nginx", "p50 ms", "p99 ms", "errors"], rows)
                 + "\norigin connections opened by both: %d" % res["origin_connections"])


def h2_burst(a, st):
    """A cold burst of --burst requests at once at a fresh proxy, origin taking
    1 s an answer: TLS handshakes (full / resumed) the origin saw."""
    if not any(p.name == "origin-slow" for p in st.procs):
        st.origin("origin-slow", "--delay-ms", 1000, "--max-streams", a.max_streams)
    st.origin("origin-slow-h1", "--delay-ms", 1000, "--alpn", "http/1.1")
    rows, data = [], {}
    cases = [("dp-h2", "metrics-h2", P["origin-slow"]), ("dp-h1", "metrics-h1", P["origin-slow-h1"]),
             ("nginx", None, P["origin-slow-h1"])]
    for name, metrics, port in cases:
        proc = (st.nginx_tls_proxy(name, port) if name == "nginx" else st.dataplane_tls(name, metrics, port))
        before = origin_stats(port)
        r = sse_result(sse_load(P[name], "/burst", a.burst, 5, "--open-per-s", 1000000), 120, name)
        after = origin_stats(port)
        full = after["handshakes_full"] - before["handshakes_full"]
        resumed = after["handshakes_resumed"] - before["handshakes_resumed"]
        data[name] = dict(r, handshakes_full=full, handshakes_resumed=resumed)
        rows.append([name, r["ok"], r["errors"], full, resumed])
        st.stop(proc)
    return data, ("== h2 burst: %d requests at once at a fresh proxy, origin answering after 1 s "
                  "(h2: %d streams a connection; dp-h1 and nginx: an http/1.1-only origin); "
                  "TLS handshakes the origin saw\n" % (a.burst, a.max_streams)
                  + table(["target", "200s", "errors", "full handshakes", "resumed"], rows))


def tls_version(st, port):
    """The TLS version the origin on `port` agrees to with a client that offers 1.2 and 1.3."""
    ctx = ssl.create_default_context(cafile=os.path.join(st.tls_dir(), "ca.pem"))
    with socket.create_connection((HOST, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as conn:
            return conn.version()


def h2_tls(a, st):
    """Throughput over TLS to an nginx origin: data plane h1 and h2 against
    nginx (h1; nginx has no HTTP/2 upstreams) and its twin, loaded at once."""
    if a.tls_origin == "nginx":
        st.nginx_tls_origin()
        h1, h2 = P["nginx-origin-h1"], P["nginx-origin"]
    else:  # the benchmark origin (hyper), started by cmd_h2
        h1, h2 = P["origin-h1"], P["origin"]
    for port in (h1, h2):  # the version the providers speak, not one the origin fell back to
        version = tls_version(st, port)
        if version != "TLSv1.3":
            raise RuntimeError("the TLS origin on port %d speaks %s, not TLS 1.3" % (port, version))
    roots = {"nginx": st.nginx_tls_proxy("nginx", h1).pid,
             "nginx-b": st.nginx_tls_proxy("nginx-b", h1).pid,
             "dp-h1": st.dataplane_tls("dp-h1", "metrics-h1", h1).pid,
             "dp-h2": st.dataplane_tls("dp-h2", "metrics-h2", h2).pid}
    if a.baseline:  # another build beside this one, in the same windows
        roots["base-h1"] = st.dataplane_tls("base-h1", "metrics-base-h1", h1, a.baseline).pid
        roots["base-h2"] = st.dataplane_tls("base-h2", "metrics-base-h2", h2, a.baseline).pid
    a.body_size = 1024
    metrics = {"dp-h1": "metrics-h1", "dp-h2": "metrics-h2", "base-h1": "metrics-base-h1",
               "base-h2": "metrics-base-h2"}
    counters = {n: "http://%s:%d/%s" % ((HOST, P[n], "_status") if n.startswith("nginx")
                                        else (HOST, P[metrics[n]], "metrics")) for n in roots}
    data, text = measure_windows(a, roots, counters, "nginx", "nginx-b")
    for n in roots:
        st.stop(next(p for p in st.procs if p.pid == roots[n]))
    if a.tls_origin == "nginx":
        st.stop(next(p for p in st.procs if p.name == "nginx-origin"))
    return data, "\n\n".join(text).replace("== throughput", "== h2 tls throughput (TLS 1.3 origin: %s)"
                                            % {"nginx": "nginx", "rust": "hyper"}[a.tls_origin])


def h2_sse(a, st):
    """--sse-streams event streams open at once through one proxy at a time:
    RSS per open stream, CPU per event, event age; `direct` is the baseline."""
    st.origin("origin-plain", "--events", a.sse_events, "--gap-ms", a.sse_gap_ms, tls=False)
    targets = [("direct", None, None), ("nginx-plain", "nginx", P["origin-plain"]),
               ("dp-plain", "dp", P["origin-plain"]), ("nginx", "nginx-tls", P["origin-h1"]),
               ("dp-h1", "dp-tls", P["origin-h1"]), ("dp-h2", "dp-tls", P["origin"])]
    rows, data = [], {}
    secs = a.sse_events * a.sse_gap_ms / 1000.0
    targets = [t for t in targets if t[0] == "direct" or not a.sse_targets or t[0] in a.sse_targets]
    for name, kind, port in targets:
        if kind is None:
            proc, target = None, P["origin-plain"]
        elif kind in ("nginx", "nginx-tls"):
            proc = st.nginx(name, P[name], PROXY_CPU, 4 * a.sse_streams + 1024,
                            nginx_proxy_http(st, name, port, tls=kind == "nginx-tls"))
            target = P[name]
        else:
            m = {"dp-plain": "metrics-plain", "dp-h1": "metrics-h1", "dp-h2": "metrics-h2"}[name]
            proc = (st.dataplane({"/": port}, name=name, metrics=m) if kind == "dp"
                    else st.dataplane_tls(name, m, port))
            target = P[name]
        # warm-up: first-use costs and upstream connections
        sse_result(sse_load(target, "/sse", 20, secs, "--open-per-s", 1000), secs + 60, name)
        root = proc.pid if proc else None
        first = rss_kib(proc_tree(root)) if root else 0
        sampler = RssSampler(root, 0.5) if root else None
        t0 = cpu_ticks(proc_tree(root)) if root else 0
        r = sse_result(sse_load(target, "/sse", a.sse_streams, secs, "--open-per-s", a.sse_open_per_s,
                                "--warmup-s", a.sse_streams / a.sse_open_per_s + 1,
                                "--late-ms", a.sse_late_ms), secs + 120, name)
        ticks = (cpu_ticks(proc_tree(root)) - t0) if root else 0
        peak = sampler.stop() if sampler else 0
        if sampler:
            log("sse %s rss trace MiB: %s" % (name, " ".join("%.0f" % (x / 1024.0) for x in sampler.samples)))
        if a.sse_late_ms:
            log("sse %s events older than %g ms, by second since the start: %s"
                % (name, a.sse_late_ms, r.get("late_by_s", {})))
        d = data[name] = dict(r, rss_first_kib=first, rss_peak_kib=peak,
                              kib_per_stream=(peak - first) / float(a.sse_streams) if root else 0,
                              cpu_us_per_event=ticks * 1e6 / CLK_TCK / max(1, r["events"]))
        base = data["direct"]["age_us"]
        added = lambda k: "-" if name == "direct" else "%+.3f" % ((d["age_us"][k] - base[k]) / 1000.0)  # noqa: E731
        rows.append([name, r["ok"], r["errors"], r["events"], "%.2f" % (d["age_us"]["p50"] / 1000.0),
                     "%.2f" % (d["age_us"]["p99"] / 1000.0), added("p50"), added("p99"),
                     "%.1f" % (first / 1024.0), "%.1f" % (peak / 1024.0), "%.1f" % d["kib_per_stream"],
                     "%.1f" % d["cpu_us_per_event"]])
        log("sse %s: %s" % (name, rows[-1]))
        if proc:
            st.stop(proc)
    return data, ("== h2 sse: %d streams open at once (opened at %d/s), %d events each, %d ms apart, "
                  "%d-byte events; one proxy at a time; age = receive - send time\n"
                  % (a.sse_streams, a.sse_open_per_s, a.sse_events, a.sse_gap_ms, 100)
                  + table(["target", "streams ok", "errors", "events", "age p50 ms", "age p99 ms", "added p50",
                           "added p99", "RSS idle MiB", "RSS peak MiB", "KiB/stream", "cpu us/event"], rows))


def nginx_proxy_http(st, name, port, tls=True):
    """An nginx proxy's http{} body: `/` to 127.0.0.1:port, over TLS (verified
    against the test CA, sessions reused) or plain."""
    ssl_ = (" proxy_ssl_server_name on; proxy_ssl_name localhost; proxy_ssl_verify on;"
            " proxy_ssl_trusted_certificate %s/ca.pem; proxy_ssl_session_reuse on;" % st.tls_dir()) if tls else ""
    return (f"    upstream up {{ server {HOST}:{port}; keepalive 1024; keepalive_requests 1000000;"
            f" keepalive_timeout 60s; }}\n"
            f"    server {{ listen {HOST}:{P[name]} backlog=4096;\n"
            f"        location = /_status {{ stub_status; }}\n"
            f"        location / {{ proxy_pass {'https' if tls else 'http'}://up; proxy_http_version 1.1;"
            f" proxy_set_header Connection \"\"; proxy_buffering off; proxy_request_buffering off;{ssl_} }}\n    }}\n")


def h2_chat(a, st):
    """--chat-clients clients, each sending 20 KiB JSON POSTs answered by a
    short event stream, again and again on its keep-alive connection, for
    --chat-duration s; the proxies loaded at once."""
    st.origin("origin-chat", "--events", 10, "--gap-ms", 50, "--max-streams", a.max_streams)
    st.origin("origin-chat-h1", "--events", 10, "--gap-ms", 50, "--alpn", "http/1.1")
    roots = {"nginx": st.nginx_tls_proxy("nginx", P["origin-chat-h1"], 4 * a.chat_clients + 1024),
             "dp-h1": st.dataplane_tls("dp-h1", "metrics-h1", P["origin-chat-h1"]),
             "dp-h2": st.dataplane_tls("dp-h2", "metrics-h2", P["origin-chat"])}
    t0 = {n: cpu_ticks(proc_tree(p.pid)) for n, p in roots.items()}
    loads = {n: sse_load(P[n], "/sse", a.chat_clients, a.chat_duration, "--repeat", "--post-bytes", 20480,
                         "--open-per-s", 2000) for n in roots}
    res, rows = {}, []
    for n, p in loads.items():
        r = res[n] = sse_result(p, a.chat_duration + 90, n)
        r["rps"] = r["done"] / r["elapsed_s"]
        r["cpu_us_per_req"] = (cpu_ticks(proc_tree(roots[n].pid)) - t0[n]) * 1e6 / CLK_TCK / max(1, r["done"])
    for n in roots:
        r = res[n]
        rows.append([n, r["done"], "%.0f" % r["rps"], "%.3f" % (r["rps"] / res["nginx"]["rps"]), r["errors"],
                     "%.1f" % (r["age_us"]["p50"] / 1000.0), "%.1f" % (r["age_us"]["p99"] / 1000.0),
                     "%.0f" % r["cpu_us_per_req"]])
        st.stop(roots[n])
    return res, ("== h2 chat: %d clients each, 20 KiB JSON POST -> 10 events 50 ms apart, repeated for %d s; "
                 "all proxies loaded at once\n" % (a.chat_clients, a.chat_duration)
                 + table(["target", "streams", "streams/s", "ratio/nginx", "errors", "event age p50 ms",
                          "p99 ms", "cpu us/stream"], rows))


# ------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def add(name, help_):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--binary", default=DEFAULT_BINARY, help="data plane binary (default: %(default)s)")
        p.add_argument("--out", default="/tmp/apiproxy-bench", help="results dir (default: %(default)s)")
        p.add_argument("--port-offset", type=int, default=0, help="add N to every port")
        p.add_argument("--skip-dataplane", action="store_true", help="nginx only (to check the harness)")
        p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
        p.add_argument("--dp-env", action="append", default=[], metavar="NAME=VALUE",
                       help="set this variable for every data plane (repeatable), e.g. API_PROXY_ACCESS_LOG=stdout")
        return p

    def add_loaded(name, help_):
        """A subcommand that loads its targets at once in rounds (measure())."""
        p = add(name, help_)
        p.add_argument("--conns", type=lambda s: [int(x) for x in s.split(",")], default=[64, 1000])
        p.add_argument("--duration", type=int, default=5, help="seconds per round")
        p.add_argument("--rounds", type=int, default=6)
        p.add_argument("--warmup", type=int, default=2, help="warm-up seconds per conns value")
        p.add_argument("--body-size", type=int, default=1024)
        return p

    t = add_loaded("throughput", "rps, latency, CPU/request, RSS vs nginx; all targets loaded at once")
    t.add_argument("--baseline", help="also load a data plane of this binary (target `base`), for an A/B")
    s = add("stream", "big download / upload: MiB/s and proxy RSS")
    s.add_argument("--size-mib", type=int, default=1024)
    s.add_argument("--nginx-buffer", help="also an nginx with proxy_buffer_size/proxy_buffers of this size, e.g. 64k")
    e = add("sse", "server-sent events: per-event lag each proxy adds")
    e.add_argument("--streams", type=int, default=10)
    e.add_argument("--events", type=int, default=20)
    e.add_argument("--gap-ms", type=int, default=20)
    q = add_loaded("stats", "stats on and pushing vs stats off: data planes only, loaded at once")
    q.add_argument("--cp-binary", default=DEFAULT_CP_BINARY, help="control plane binary (default: %(default)s)")
    add_loaded("accesslog", "access log off vs JSON to a file vs a stalled sink, beside nginx's buffered access_log")
    k = add_loaded("keys", "proxy keys: a keyed mapping with credential injection vs open ones, loaded at once "
                           "and under callgrind; memory a key")
    k.add_argument("--parts", type=lambda s: s.split(","), default=["load", "instr", "memory"])
    k.add_argument("--n1", type=int, default=2000, help="instr: requests of the first run")
    k.add_argument("--n2", type=int, default=6000, help="instr: requests of the second run")
    k.add_argument("--keys", type=int, default=100000, help="memory: keys in the big node")
    k.add_argument("--resync", type=int, default=2, help="memory: the nodes' API_PROXY_RESYNC_INTERVAL, s")
    k.add_argument("--cp-binary", default=DEFAULT_CP_BINARY, help="control plane binary (default: %(default)s)")
    o = add("outage", "stats through a control-plane outage: data plane RSS, failed pushes, exact total")
    o.add_argument("--outage", type=int, default=30, help="seconds the control plane is away")
    o.add_argument("--warmup", type=int, default=2, help="seconds of load before the kill")
    o.add_argument("--conns", type=int, default=8)
    o.add_argument("--cp-binary", default=DEFAULT_CP_BINARY, help="control plane binary (default: %(default)s)")
    i = add("instr", "callgrind: user-space instructions per request")
    i.add_argument("--n1", type=int, default=2000)
    i.add_argument("--n2", type=int, default=6000)
    h = add("h2", "TLS and HTTP/2 upstreams: slow origin, cold burst, TLS throughput, SSE at scale, chat")
    h.add_argument("--parts", type=lambda s: s.split(","), default=["slow", "burst", "tls", "sse", "chat"])
    h.add_argument("--max-streams", type=int, default=128, help="origin's SETTINGS_MAX_CONCURRENT_STREAMS")
    h.add_argument("--slow-clients", type=int, default=400)
    h.add_argument("--slow-duration", type=int, default=15)
    h.add_argument("--burst", type=int, default=1000)
    h.add_argument("--conns", type=lambda s: [int(x) for x in s.split(",")], default=[64, 1000])
    h.add_argument("--duration", type=int, default=5, help="tls: seconds per round")
    h.add_argument("--rounds", type=int, default=6, help="tls: rounds")
    h.add_argument("--warmup", type=int, default=3, help="tls: warm-up seconds per conns value")
    h.add_argument("--sse-streams", type=int, default=10000)
    h.add_argument("--sse-events", type=int, default=100)
    h.add_argument("--sse-gap-ms", type=int, default=200)
    h.add_argument("--sse-late-ms", type=float, default=0,
                   help="sse: log how many events arrived older than this, per second of the run")
    h.add_argument("--sse-open-per-s", type=int, default=2000)
    h.add_argument("--sse-targets", type=lambda s: s.split(","), help="sse: only these (direct always runs)")
    h.add_argument("--chat-clients", type=int, default=1000)
    h.add_argument("--chat-duration", type=int, default=20)
    h.add_argument("--baseline", help="tls: also load data planes of this binary (base-h1, base-h2)")
    h.add_argument("--tls-origin", choices=["nginx", "rust"], default="nginx",
                   help="tls: the origin (rust: the benchmark origin, hyper)")
    f = add("fleet", "N data planes on one Redis with M mappings: ready time, RSS, propagation of K API changes, "
                     "idle Redis CPU")
    f.add_argument("--nodes", type=int, default=30, help="data planes in the fleet (1-1000)")
    f.add_argument("--mappings", type=int, default=10000, help="mappings in Redis (at least 1)")
    f.add_argument("--changes", type=int, default=100, help="changes made through the API, one at a time")
    f.add_argument("--spacing", type=int, default=200, help="ms between two changes")
    f.add_argument("--idle", type=float, default=30, help="seconds of the idle window")
    f.add_argument("--resync", help="API_PROXY_RESYNC_INTERVAL of the nodes and the control plane, e.g. 1s "
                                    "(default: unset, the binaries' default)")
    f.add_argument("--node-cpus", default=PROXY_CPU if PIN else None,
                   help="taskset CPU list of every node (default: %(default)s; Redis, the control plane and "
                        "this script run on CPU " + LOAD_CPU + ")")
    f.add_argument("--ready-timeout", type=float, default=120, help="seconds the fleet may take to be ready")
    f.add_argument("--cp-binary", default=DEFAULT_CP_BINARY, help="control plane binary (default: %(default)s)")
    for helper in ("_sink", "_sse"):  # helper servers started by the subcommands
        sub.add_parser(helper).add_argument("--port", type=int, required=True)
    a = ap.parse_args()

    if a.cmd in ("_sink", "_sse"):  # runs until SIGTERM (default action: exit)
        asyncio.run((serve_sink if a.cmd == "_sink" else serve_sse)(a.port))
        return
    P.update({k: v + a.port_offset for k, v in BASE_PORTS.items()})
    if a.cmd == "fleet":
        if not (1 <= a.nodes <= 1000 and a.mappings >= 1 and a.changes >= 1 and a.idle > 0 and a.spacing >= 0):
            raise SystemExit("fleet: --nodes 1-1000, --mappings >= 1, --changes >= 1, --idle > 0, --spacing >= 0")
        for i in range(a.nodes):  # checked free by run(), as every other port
            P["fleet-%d" % i], P["fleet-metrics-%d" % i] = (FLEET_PORT + a.port_offset + i,
                                                             FLEET_METRICS_PORT + a.port_offset + i)
    need = {"throughput": ["wrk"], "stream": ["curl"], "sse": [], "instr": ["h2load", "valgrind"],
            "stats": ["wrk", "redis-server"], "outage": ["wrk", "redis-server"], "h2": ["wrk"],
            "accesslog": ["wrk"], "keys": ["wrk", "redis-server", "redis-cli", "h2load", "valgrind"],
            "fleet": ["redis-server", "redis-cli"]}[a.cmd]
    need = ([] if a.cmd == "fleet" else ["nginx"]) + need + (["taskset"] if PIN else [])
    missing = [x for x in need if not shutil.which(x)]
    if missing:
        raise SystemExit("missing: %s (run bench/install.sh)" % " ".join(missing))
    if PIN:
        os.sched_setaffinity(0, {int(LOAD_CPU)})  # this script (samplers, SSE clients) stays off the proxy CPU
    else:
        log("fewer than 2 CPUs: running unpinned")
    run(a, {"throughput": cmd_throughput, "stream": cmd_stream, "sse": cmd_sse, "instr": cmd_instr,
            "stats": cmd_stats, "outage": cmd_outage, "h2": cmd_h2, "accesslog": cmd_accesslog,
            "keys": cmd_keys, "fleet": cmd_fleet}[a.cmd])


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        log("interrupted: stopped every process this run started")
        sys.exit(130)
