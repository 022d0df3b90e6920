"""How rows land: the binary COPY writer, its encoder and the coverage and gap bookkeeping in SQL."""
