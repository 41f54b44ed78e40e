"""FLEX_TEMPLATE_PYTHON_PY_FILE of the actprep image: the Flex Template launcher runs this
with the template parameters and Dataflow's options as ``--name=value`` arguments; they
become an ``actprep run`` command line (see actprep.commands.flex)."""
from actprep.commands.flex import entry

if __name__ == "__main__":
    entry()
