"""Small programs that ship with idgateway for demonstrations and trials."""
