from ptq4vm_core.cli.main import main

main()
