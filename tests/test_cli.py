import subprocess
import sys
import time

from spatiotemporal.cli import COMMANDS


def test_help_answers_in_under_a_second_without_heavy_imports():
    code = "import sys, time; t=time.perf_counter(); from spatiotemporal.cli import main\n" \
           "try: main(['--help'])\nexcept SystemExit: pass\n" \
           "print(time.perf_counter()-t, 'torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, torch_loaded, ray_loaded = out.stdout.strip().splitlines()[-1].split()
    assert float(seconds) < 1.0
    assert torch_loaded == "False" and ray_loaded == "False"


def test_every_command_module_has_help_arguments_and_run():
    import importlib

    for key, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        assert module.HELP, key
        assert callable(module.add_arguments) and callable(module.run), key
