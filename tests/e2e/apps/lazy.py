"""Images for the lazy-loading tests: a large file read one page at a time, and a small file
whose content appears nowhere else (so its chunk can be damaged on purpose)."""

import os

import ember

BIG_MIB = 64
SECRET = "only-in-the-secret-image-7f3a9c"

big_image = ember.Image.debian_slim().run_commands(
    f"head -c {BIG_MIB}M /dev/urandom > /big.bin", "sha256sum /big.bin > /big.sha256"
)
secret_image = ember.Image.debian_slim().run_commands(f"echo {SECRET} > /secret.txt")

app = ember.App("e2e-lazy")

# Containers stop soon after their input: the tests empty the host's cache between calls, and
# wait for that first.
SCALEDOWN_S = 2


def _page(offset: int) -> int:
    with open("/big.bin", "rb") as file:
        file.seek(offset)
        return len(file.read(4096))


@app.function(image=big_image, scaledown_window=SCALEDOWN_S)
def read_page(offset: int) -> int:
    return _page(offset)


@app.function(image=big_image, scaledown_window=600)
def read_page_long_lived(offset: int) -> int:
    """read_page in a container that stays long after its input unless something stops it."""
    return _page(offset)


@app.function(image=big_image, scaledown_window=SCALEDOWN_S)
def checksum_matches() -> bool:
    import hashlib

    with open("/big.sha256") as listed, open("/big.bin", "rb") as big:
        return hashlib.sha256(big.read()).hexdigest() == listed.read().split()[0]


@app.function(image=secret_image, scaledown_window=SCALEDOWN_S)
def read_secret() -> str:
    return open("/secret.txt").read().strip()


@app.function(image=secret_image, scaledown_window=SCALEDOWN_S)
def pid() -> int:
    return os.getpid()
