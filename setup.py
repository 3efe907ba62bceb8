from setuptools import find_packages, setup

setup(
    name="guided-diffusion-zoo",
    version="0.1.0",
    description="Train, sample, guide and evaluate diffusion models: ADM, EDM, DiT, latent UNets and their guidance.",
    packages=find_packages(include=["guided_diffusion", "guided_diffusion.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch",
        "torchvision",
        "numpy",
        "scipy",
        "pillow",
        "tqdm",
        "blobfile",
        "timm",
        "open-clip-torch",
        "pyyaml",
    ],
    extras_require={"mpi": ["mpich", "mpi4py"], "test": ["pytest"]},
)
