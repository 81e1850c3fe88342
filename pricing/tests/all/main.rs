//! Integration tests of tally-pricing.
