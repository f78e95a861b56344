"""Install script for llmhdr_basicsr, a BasicSR plugin for unpaired LDR->HDR reconstruction (LLM-HDR / CycleHDR).

Besides the package, three *start-up files* go to the top level of site-packages, for normal and editable installs:

- ``llmhdr_basicsr.pth``: one line, ``import _llmhdr_basicsr_boot`` (runs at every interpreter start);
- ``_llmhdr_basicsr_boot.py``: standard-library-only hook (torchvision alias + plugin auto-load for BasicSR);
- ``llmhdr_basicsr.start``: the PEP 829 replacement of the ``.pth`` import line (Python >= 3.15).

setuptools' PEP 660 editable install drops top-level data files, so ``editable_wheel`` is extended to copy them
into the editable wheel as well (``tests/test_install.py`` fails loudly if the hook goes missing).
"""

import os
import re
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = os.path.dirname(os.path.abspath(__file__))
STARTUP_FILES = ('llmhdr_basicsr.pth', '_llmhdr_basicsr_boot.py', 'llmhdr_basicsr.start')


def read_version() -> str:
    with open(os.path.join(HERE, 'llmhdr_basicsr', 'version.py'), encoding='utf-8') as f:
        return re.search(r"^__version__ = '([^']+)'", f.read(), re.M).group(1)


def copy_startup_files(dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    for name in STARTUP_FILES:
        shutil.copy2(os.path.join(HERE, 'startup', name), os.path.join(dest, name))


class BuildPyWithStartup(build_py):
    """Normal wheels: put the start-up files at the wheel root (= site-packages)."""

    def run(self):
        super().run()
        copy_startup_files(self.build_lib)


class EditableWheelWithStartup(editable_wheel):
    """Editable wheels: same files, copied into the unpacked editable wheel (everything there is installed).

    ``_run_build_commands`` is a private setuptools hook; the build requirement pins setuptools to a tested range.
    """

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        copy_startup_files(unpacked_wheel)
        return result


with open(os.path.join(HERE, 'README.md'), encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='llmhdr_basicsr',
    version=read_version(),
    description='LLM-HDR / CycleHDR unpaired LDR-to-HDR reconstruction as a BasicSR plugin',
    long_description=long_description,
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10,<3.13',
    packages=find_packages(include=['llmhdr_basicsr', 'llmhdr_basicsr.*']),
    package_data={'llmhdr_basicsr': ['py.typed', 'pretrained/*.pth', 'pretrained/*.json']},
    py_modules=[],
    install_requires=[
        'torch==2.14.1',  # keep torch and torchvision together
        'torchvision==0.29.1',
        'basicsr==1.4.2',  # install it first with --no-build-isolation (see README)
        'numpy>=1.26',
        'scipy>=1.11,<2',  # basicsr imports scipy.ndimage.filters, removed in SciPy 2
        'opencv-python>=4.10,<5',  # the 5.x wheels have no OpenEXR codec
        'scikit-image>=0.21',
        'pyyaml',
        'tensorboard',
        'tqdm',
        'lpips',
        'open_clip_torch',
        'segment-anything',
        'cvvdp>=0.5.7',
    ],
    extras_require={
        'test': ['pytest', 'pytest-xdist', 'ruff'],
        'dev': ['pytest', 'pytest-xdist', 'ruff', 'pre-commit'],
    },
    entry_points={
        'basicsr.plugins': ['llmhdr_basicsr = llmhdr_basicsr.plugin'],
        'console_scripts': [
            'llmhdr-train = llmhdr_basicsr.train:main',
            'llmhdr-test = llmhdr_basicsr.test:main',
            'llmhdr-perceive = llmhdr_basicsr.perceive:main',
            'llmhdr-infer = llmhdr_basicsr.infer:main',
            'llmhdr-tonemap = llmhdr_basicsr.tonemap_cli:main',
            'llmhdr-eval = llmhdr_basicsr.evaluate:main',
        ],
    },
    cmdclass={'build_py': BuildPyWithStartup, 'editable_wheel': EditableWheelWithStartup},
    zip_safe=False,
)
