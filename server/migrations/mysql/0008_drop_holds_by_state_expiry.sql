-- The index of holds by state and deadline served the sweeper when it found expired holds across
-- every product; since expiry buckets (0007) it finds them product by product, through
-- `holds_by_product_state`, and nothing reads this one. Every grant still paid for it: one more
-- index entry per hold inserted, and two changed per hold consumed or released
-- (docs/PERFORMANCE.md, "The cost of a request").

DROP INDEX IF EXISTS holds_by_state_expiry ON holds;
