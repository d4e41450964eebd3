from setuptools import find_packages, setup

setup(
    name="erq",
    version="0.1.0",
    description="Fast ERQ post-training quantization of vision transformers, with Triton "
                "solver and quantization kernels (erq_kernels).",
    packages=find_packages(include=["erq", "erq.*", "erq_kernels", "erq_kernels.*"]),
    package_data={"erq_kernels": ["dispatch_table.json"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "timm>=1.0", "safetensors", "pillow", "tqdm", "numpy"],
    extras_require={"triton": ["triton>=3.2"], "test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["erq=erq.cli:main"]},
)
