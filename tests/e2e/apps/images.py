"""An image using every builder method; its function reports what it finds inside."""

import os
from pathlib import Path

import ember

ASSETS = Path(__file__).parent / "image_assets"


def download_weights() -> None:
    os.makedirs("/models", exist_ok=True)
    with open("/models/weights.bin", "w") as file:
        file.write(f"weights made at build time in {os.getcwd()}")


image = (
    ember.Image.debian_slim(python_version="3.11")
    .apt_install("jq")
    .pip_install("six==1.16.0")
    .uv_pip_install("tomli==2.0.1")
    .pip_install_from_requirements(ASSETS / "requirements.txt")
    .run_commands("echo built > /etc/built", "mkdir -p /data && echo $HOME > /data/home")
    .env({"MODEL_DIR": "/models"})
    .workdir("/work")
    .run_function(download_weights)
    .add_local_dir(ASSETS / "data", "/assets")
    .add_local_file(str(ASSETS / "note.txt"), "/etc/note.txt")
    .add_local_python_source("e2e_mypkg")
)

with image.imports():
    import tomli  # not installed where the tests run: skipped there, imported in the container

app = ember.App("e2e-images", image=image)


@app.function()
def inspect() -> dict:
    import shutil
    import subprocess

    import e2e_mypkg
    import idna
    import six

    def read(path: str) -> str:
        return Path(path).read_text().strip()

    return {
        "jq": shutil.which("jq"),
        "jq_output": subprocess.run(
            ["jq", "-n", "1+1"], capture_output=True, text=True, check=True
        ).stdout.strip(),
        "six": six.__version__,
        "tomli": tomli.loads('a = "b"'),
        "idna": idna.__version__,
        "built": read("/etc/built"),
        "home": read("/data/home"),
        "model_dir": os.environ.get("MODEL_DIR"),
        "cwd": os.getcwd(),
        "weights": read("/models/weights.bin"),
        "assets": sorted(str(p.relative_to("/assets")) for p in Path("/assets").rglob("*.txt")),
        "asset_one": read("/assets/one.txt"),
        "note": read("/etc/note.txt"),
        "mypkg": e2e_mypkg.GREETING,
    }


@app.function(image=ember.Image.debian_slim())
def plain_image() -> bool:
    return os.path.exists("/etc/built")
