from streams.cli import main

main(prog_name="streams")
