"""What the tests and the benchmarks (``perf/``) both start and build, written once: real
servers on loopback (:mod:`devkit.servers`: the gateway and its workers, PostgreSQL, the
Milvus servers, Triton, HAProxy), media sources (:mod:`devkit.media`: RTSP, MJPEG, a
redirecting server) and synthetic video scenes with their ground truth
(:mod:`devkit.scenes`). Development only: not part of the installed packages."""
