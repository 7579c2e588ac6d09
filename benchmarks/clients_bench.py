"""The clients' credentials store at scale: 20,000 LwM2M clients by default.

Phases (a fresh store file in a temporary directory):
  sync      the configuration-file path: all clients written in one transaction (sync_config)
  reopen    the start-up path: open the file and build the in-memory index (the load time)
  lookups   what the DTLS handshake and the security binding ask, per second on one core:
            psk_key(identity), rpk_allowed(spki), x509_allowed(principal, bound by name),
            get(endpoint), an unknown identity, and SecurityBinding checks (PSK Register)
  change    single add + remove at run time (one transaction each, fsync included)
  memory    bytes the index takes (tracemalloc around the reopen) and RSS

The population is mixed like ThingsBoard's tests (PSK, RPK, X.509) plus some NoSec; raw public keys are
distinct valid P-256 points (P_{i+1} = P_i + G). Example:

    python benchmarks/clients_bench.py --clients 20000
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from gateway.lwm2m.security import SecurityBinding
from gateway.store.clients import ClientEntry, ClientStore, Source
from gateway.transport.dtls import PskPrincipal, X509Principal, p256_spki

# secp256r1
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5


def p256_points(n: int) -> list[bytes]:
    """``n`` distinct points on P-256 as SubjectPublicKeyInfo (G, 2G, 3G, ... by affine addition)."""
    out = []
    x, y = GX, GY
    for _ in range(n):
        out.append(p256_spki(x.to_bytes(32, "big"), y.to_bytes(32, "big")))
        lam = (y - GY) * pow(x - GX, -1, P) % P if x != GX else (3 * x * x - 3) * pow(2 * y, -1, P) % P
        nx = (lam * lam - x - GX) % P
        y = (lam * (x - nx) - y) % P
        x = nx
    return out


def population(n: int, shares: tuple[float, float, float]) -> list[ClientEntry]:
    n_psk, n_rpk, n_x509 = (int(n * s) for s in shares)
    keys = p256_points(n_rpk)
    entries: list[ClientEntry] = []
    for i in range(n_psk):
        entries.append(ClientEntry.psk(f"LwPSK{i:08d}", f"LwPSK{i:08d}-identity", os.urandom(16), source=Source.CONFIG))
    for i, spki in enumerate(keys):
        entries.append(ClientEntry.rpk(f"LwRPK{i:08d}", spki, source=Source.CONFIG))
    for i in range(n_x509):
        entries.append(ClientEntry.x509(f"LwX509{i:08d}", source=Source.CONFIG))
    for i in range(n - len(entries)):
        entries.append(ClientEntry.nosec(f"LwNoSec{i:08d}", source=Source.CONFIG))
    return entries


def rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def rate(fn: Callable[[int], object], items: int, seconds: float) -> float:
    """Calls per second of ``fn(i)`` for i cycling over ``items`` values, for about ``seconds``."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for i in range(min(items, 10_000)):
            fn(i)
        calls += min(items, 10_000)
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=20_000)
    p.add_argument("--psk", type=float, default=0.5, help="share of PSK clients (default 0.5)")
    p.add_argument("--rpk", type=float, default=0.3, help="share of RPK clients (default 0.3)")
    p.add_argument("--x509", type=float, default=0.15, help="share of X.509 clients; the rest NoSec (0.15)")
    p.add_argument("--seconds", type=float, default=1.0, help="time per lookup measurement")
    p.add_argument("--dir", help="where to put the store file (default: a temporary directory)")
    args = p.parse_args()

    t = time.perf_counter()
    entries = population(args.clients, (args.psk, args.rpk, args.x509))
    psk = [e for e in entries if e.identity is not None]
    rpk = [e for e in entries if e.public_key is not None]
    x509 = [e for e in entries if e.bound_name is not None]
    print(
        f"population: {len(entries)} clients ({len(psk)} PSK, {len(rpk)} RPK, {len(x509)} X.509, "
        f"{len(entries) - len(psk) - len(rpk) - len(x509)} NoSec), made in {time.perf_counter() - t:.1f} s"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "clients.sqlite3"
        store = ClientStore.open(path)
        t = time.perf_counter()
        result = store.sync_config(entries)
        print(f"sync      {len(result.added)} clients written in {time.perf_counter() - t:.3f} s (one transaction)")
        store.close()
        size = path.stat().st_size
        del result
        gc.collect()

        rss_before = rss_mib()
        t = time.perf_counter()
        store = ClientStore.open(path)
        load_s = time.perf_counter() - t
        rss_after = rss_mib()
        print(f"reopen    {len(store)} clients loaded and indexed in {load_s:.3f} s ({size / 2**20:.1f} MiB file)")
        store.close()
        gc.collect()
        tracemalloc.start()
        store = ClientStore.open(path)
        index_bytes, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()

        identities = [e.identity for e in psk if e.identity is not None]
        spkis = [e.public_key for e in rpk if e.public_key is not None]
        certs = [X509Principal(e.bound_name, (), True, b"\x30\x00") for e in x509]
        endpoints = [e.endpoint for e in entries]
        claims = [(e.endpoint, (PskPrincipal(e.identity or b""),)) for e in psk]
        binding = SecurityBinding(store)
        psk_key, rpk_allowed, x509_allowed, get = store.psk_key, store.rpk_allowed, store.x509_allowed, store.get
        cases: list[tuple[str, Callable[[int], object], int]] = [
            ("psk_key(identity)", lambda i: psk_key(identities[i]), len(identities)),
            ("rpk_allowed(spki)", lambda i: rpk_allowed(spkis[i]), len(spkis)),
            ("x509_allowed(by name)", lambda i: x509_allowed(certs[i]), len(certs)),
            ("get(endpoint)", lambda i: get(endpoints[i]), len(endpoints)),
            ("psk_key(unknown)", lambda i: psk_key(b"nobody-%d" % i), 10_000),
            ("binding (PSK Register)", lambda i: binding.check(*claims[i]), len(claims)),
        ]
        for name, fn, items in cases:
            if items:
                per_s = rate(fn, items, args.seconds)
                print(f"lookups   {name:<24} {per_s:>12,.0f}/s  {1e6 / per_s:6.2f} us each")
        assert binding.stats()["refused"] == 0

        t = time.perf_counter()
        n = 50
        for i in range(n):
            store.add(ClientEntry.psk(f"runtime-{i}", f"runtime-{i}-id", os.urandom(16)))
            store.remove(f"runtime-{i}")
        print(f"change    add + remove at run time: {(time.perf_counter() - t) / (2 * n) * 1000:.2f} ms each (fsync)")
        print(
            f"memory    index {index_bytes / 2**20:.1f} MiB ({index_bytes / len(store):.0f} B per client, "
            f"tracemalloc); RSS +{rss_after - rss_before:.1f} MiB for the first reopen, "
            f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB"
        )
        store.close()


if __name__ == "__main__":
    main()
