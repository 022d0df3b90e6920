-- Quality (docs/FEATURES.md "Quality"): is a symbol's trade stream known on both sides of
-- [p_lo, p_hi)? A stored trade before p_lo and one at or after p_hi: with no open gap between
-- them, every trade of the span is stored (aggregate ids rise with trade time). A function so
-- that the feature views do not depend on agg_trades (see quality_gap_spans.sql); inlined.
CREATE OR REPLACE FUNCTION microstructure_trades_known(p_symbol text, p_lo timestamptz, p_hi timestamptz)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM agg_trades a WHERE a.symbol = p_symbol AND a.ts < p_lo)
       AND EXISTS (SELECT 1 FROM agg_trades a WHERE a.symbol = p_symbol AND a.ts >= p_hi)
$$
