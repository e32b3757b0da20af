from acme_orders.cli import main

main()
