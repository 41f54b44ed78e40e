"""The Beam job and what it needs: plan, process, fragments, commit, retry, the run lock,
storage and the output's layout. Command front-ends live in ``commands``, output tools in
``reports``."""
