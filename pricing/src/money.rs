//! Currencies, rounding and exact decimal arithmetic.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::error::{Result, overflow};

/// A currency from ISO 4217, with its number of minor units (decimal places of the smallest coin).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Currency {
    /// US dollar, 2 minor units.
    Usd,
    /// Euro, 2.
    Eur,
    /// Pound sterling, 2.
    Gbp,
    /// Swiss franc, 2.
    Chf,
    /// Canadian dollar, 2.
    Cad,
    /// Australian dollar, 2.
    Aud,
    /// Swedish krona, 2.
    Sek,
    /// Indian rupee, 2.
    Inr,
    /// Japanese yen, 0.
    Jpy,
    /// South Korean won, 0.
    Krw,
    /// Bahraini dinar, 3.
    Bhd,
    /// Kuwaiti dinar, 3.
    Kwd,
    /// Omani rial, 3.
    Omr,
    /// Jordanian dinar, 3.
    Jod,
}

impl Currency {
    /// Every supported currency.
    pub const ALL: [Currency; 14] = [
        Currency::Usd,
        Currency::Eur,
        Currency::Gbp,
        Currency::Chf,
        Currency::Cad,
        Currency::Aud,
        Currency::Sek,
        Currency::Inr,
        Currency::Jpy,
        Currency::Krw,
        Currency::Bhd,
        Currency::Kwd,
        Currency::Omr,
        Currency::Jod,
    ];

    /// The ISO 4217 alphabetic code, e.g. `"USD"`.
    pub const fn code(self) -> &'static str {
        match self {
            Currency::Usd => "USD",
            Currency::Eur => "EUR",
            Currency::Gbp => "GBP",
            Currency::Chf => "CHF",
            Currency::Cad => "CAD",
            Currency::Aud => "AUD",
            Currency::Sek => "SEK",
            Currency::Inr => "INR",
            Currency::Jpy => "JPY",
            Currency::Krw => "KRW",
            Currency::Bhd => "BHD",
            Currency::Kwd => "KWD",
            Currency::Omr => "OMR",
            Currency::Jod => "JOD",
        }
    }

    /// The ISO 4217 minor units: invoice lines are rounded to this many decimal places.
    pub const fn minor_units(self) -> u32 {
        match self {
            Currency::Jpy | Currency::Krw => 0,
            Currency::Bhd | Currency::Kwd | Currency::Omr | Currency::Jod => 3,
            _ => 2,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = String;

    fn from_str(code: &str) -> Result<Currency, String> {
        Currency::ALL
            .iter()
            .copied()
            .find(|currency| currency.code() == code)
            .ok_or_else(|| {
                let known: Vec<&str> = Currency::ALL.iter().map(|c| c.code()).collect();
                format!(
                    "unknown currency \"{code}\"; supported: {}",
                    known.join(", ")
                )
            })
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Currency, D::Error> {
        let code = String::deserialize(deserializer)?;
        code.parse().map_err(serde::de::Error::custom)
    }
}

/// How an invoice line is rounded to the currency's minor units. Amounts are never negative, so
/// `half_up` and `half_away_from_zero` give the same results; both names are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoundingMode {
    /// Ties go to the even neighbour (banker's rounding). The default.
    #[default]
    HalfEven,
    /// Ties go up.
    HalfUp,
    /// Ties go away from zero.
    HalfAwayFromZero,
}

impl RoundingMode {
    /// The `rust_decimal` strategy this mode names.
    pub const fn strategy(self) -> RoundingStrategy {
        match self {
            RoundingMode::HalfEven => RoundingStrategy::MidpointNearestEven,
            RoundingMode::HalfUp | RoundingMode::HalfAwayFromZero => {
                RoundingStrategy::MidpointAwayFromZero
            }
        }
    }

    /// The snake_case name used in plans.
    pub const fn as_str(self) -> &'static str {
        match self {
            RoundingMode::HalfEven => "half_even",
            RoundingMode::HalfUp => "half_up",
            RoundingMode::HalfAwayFromZero => "half_away_from_zero",
        }
    }
}

/// `price × quantity`, exactly: an error instead of any rounding or overflow.
pub(crate) fn mul_exact(
    price: Decimal,
    quantity: u128,
    context: &dyn Fn() -> String,
) -> Result<Decimal> {
    if quantity == 0 || price.is_zero() {
        return Ok(Decimal::ZERO);
    }
    let quantity = to_decimal(quantity, context)?;
    let product = price
        .checked_mul(quantity)
        .ok_or_else(|| overflow(context()))?;
    // rust_decimal keeps the sum of the scales when the product fits in 96 bits and drops
    // fractional digits (rounding) when it does not: refuse the latter.
    if product.scale() != price.scale() {
        return Err(overflow(context()));
    }
    Ok(product)
}

/// `a + b`, exactly.
pub(crate) fn add_exact(a: Decimal, b: Decimal, context: &dyn Fn() -> String) -> Result<Decimal> {
    let sum = a.checked_add(b).ok_or_else(|| overflow(context()))?;
    if !sum.is_zero() && sum.scale() < a.scale().max(b.scale()) {
        return Err(overflow(context()));
    }
    Ok(sum)
}

/// An integer quantity as a decimal (at most 96 bits).
pub(crate) fn to_decimal(quantity: u128, context: &dyn Fn() -> String) -> Result<Decimal> {
    let signed = i128::try_from(quantity).map_err(|_| overflow(context()))?;
    Decimal::try_from_i128_with_scale(signed, 0).map_err(|_| overflow(context()))
}

const POWERS_OF_TEN: [u128; 39] = {
    let mut table = [1u128; 39];
    let mut index = 1;
    while index < 39 {
        table[index] = table[index - 1] * 10;
        index += 1;
    }
    table
};

/// Rounds the fraction `numerator / denominator` to `places` decimal places with `strategy`,
/// exactly: integer arithmetic on the fraction, never on a truncated quotient.
///
/// `numerator` must be non-negative and `denominator` positive.
pub(crate) fn round_ratio(
    numerator: Decimal,
    denominator: u128,
    places: u32,
    strategy: RoundingStrategy,
    context: &dyn Fn() -> String,
) -> Result<Decimal> {
    assert!(numerator >= Decimal::ZERO, "amounts are never negative");
    assert!(denominator > 0, "unit sizes are positive");
    let mantissa = numerator.mantissa().unsigned_abs();
    let scale = numerator.scale();
    // value × 10^places = mantissa × 10^places / (10^scale × denominator)
    let (num, den) = if places >= scale {
        let factor = POWERS_OF_TEN[(places - scale) as usize];
        (
            mantissa
                .checked_mul(factor)
                .ok_or_else(|| overflow(context()))?,
            denominator,
        )
    } else {
        match POWERS_OF_TEN[(scale - places) as usize].checked_mul(denominator) {
            Some(den) => (mantissa, den),
            // The denominator exceeds 2^128 while the mantissa is below 2^96: the value is far
            // below half a minor unit, so every nearest-rounding mode gives zero.
            None => {
                return Ok(Decimal::new(0, places));
            }
        }
    };
    let quotient = num / den;
    let remainder = num % den;
    let rest = den - remainder; // distance to the next multiple
    let round_up = match remainder.cmp(&rest) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal => match strategy {
            RoundingStrategy::MidpointNearestEven => quotient % 2 == 1,
            RoundingStrategy::MidpointTowardZero | RoundingStrategy::ToZero => false,
            _ => true,
        },
    };
    let round_up = match strategy {
        RoundingStrategy::ToZero | RoundingStrategy::ToNegativeInfinity => false,
        RoundingStrategy::AwayFromZero | RoundingStrategy::ToPositiveInfinity => remainder != 0,
        _ => round_up && remainder != 0,
    };
    let minor = quotient + u128::from(round_up);
    let minor = i128::try_from(minor).map_err(|_| overflow(context()))?;
    Decimal::try_from_i128_with_scale(minor, places).map_err(|_| overflow(context()))
}

/// `numerator / denominator` as a decimal for display: exact when it fits in 28 significant
/// digits, otherwise the nearest such decimal (half-even). The rounded amount never uses it.
pub(crate) fn quotient_for_display(
    numerator: Decimal,
    denominator: u128,
    context: &dyn Fn() -> String,
) -> Result<Decimal> {
    if denominator == 1 {
        return Ok(numerator.normalize());
    }
    // Dividing by 10^k only moves the decimal point: exact and cheap while the scale fits.
    if let Some(power) = POWERS_OF_TEN.iter().position(|power| *power == denominator) {
        let scale = numerator.scale() + power as u32;
        if scale <= 28 {
            return Ok(Decimal::from_i128_with_scale(numerator.mantissa(), scale).normalize());
        }
    }
    let denominator = to_decimal(denominator, context)?;
    let quotient = numerator
        .checked_div(denominator)
        .ok_or_else(|| overflow(context()))?;
    Ok(quotient.normalize())
}

/// Serde for decimals as JSON strings, parsed exactly (`"0.20"`, never a JSON number).
pub(crate) mod decimal_string {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        value: &Decimal,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Decimal, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub(crate) fn parse(text: &str) -> Result<Decimal, String> {
        let valid = !text.is_empty()
            && text
                .bytes()
                .all(|byte| byte.is_ascii_digit() || byte == b'.' || byte == b'-');
        if !valid {
            return Err(format!(
                "\"{text}\" is not a plain decimal number like \"0.25\""
            ));
        }
        Decimal::from_str_exact(text)
            .map_err(|error| format!("\"{text}\" is not an exact decimal: {error}"))
    }

    /// The same for `Option<Decimal>`.
    pub(crate) mod option {
        use rust_decimal::Decimal;
        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            value: &Option<Decimal>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => serializer.collect_str(value),
                None => serializer.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Decimal>, D::Error> {
            let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(deserializer)?;
            text.map(|text| super::parse(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// Serde for integer quantities (`u128`): serialized as JSON strings (safe for JavaScript);
/// accepted as a string of digits or a JSON integer up to 2^64 - 1.
pub(crate) mod quantity_string {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    struct QuantityVisitor;

    impl Visitor<'_> for QuantityVisitor {
        type Value = u128;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str(
                "a non-negative integer quantity (a string of digits, or a JSON integer)",
            )
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u128, E> {
            Ok(u128::from(value))
        }

        fn visit_u128<E: de::Error>(self, value: u128) -> Result<u128, E> {
            Ok(value)
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<u128, E> {
            u128::try_from(value).map_err(|_| E::custom(format!("quantity {value} is negative")))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u128, E> {
            if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(E::custom(format!(
                    "quantity \"{text}\" is not a string of digits"
                )));
            }
            text.parse()
                .map_err(|_| E::custom(format!("quantity \"{text}\" exceeds 2^128 - 1")))
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<u128, D::Error> {
        deserializer.deserialize_any(QuantityVisitor)
    }

    /// The same for `Option<u128>`.
    pub(crate) mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        #[derive(Deserialize)]
        #[serde(transparent)]
        struct Wrapped(#[serde(with = "super")] u128);

        pub(crate) fn serialize<S: Serializer>(
            value: &Option<u128>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => serializer.collect_str(value),
                None => serializer.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<u128>, D::Error> {
            Ok(<Option<Wrapped>>::deserialize(deserializer)?.map(|wrapped| wrapped.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> String {
        "test".to_owned()
    }

    fn round(numerator: &str, denominator: u128, places: u32, mode: RoundingMode) -> String {
        round_ratio(
            numerator.parse().unwrap(),
            denominator,
            places,
            mode.strategy(),
            &ctx,
        )
        .unwrap()
        .to_string()
    }

    #[test]
    fn ties_follow_the_named_mode() {
        assert_eq!(round("0.125", 1, 2, RoundingMode::HalfEven), "0.12");
        assert_eq!(round("0.135", 1, 2, RoundingMode::HalfEven), "0.14");
        assert_eq!(round("0.125", 1, 2, RoundingMode::HalfUp), "0.13");
        assert_eq!(round("0.125", 1, 2, RoundingMode::HalfAwayFromZero), "0.13");
        assert_eq!(round("2.5", 1, 0, RoundingMode::HalfEven), "2");
        assert_eq!(round("3.5", 1, 0, RoundingMode::HalfEven), "4");
    }

    #[test]
    fn rounding_uses_the_fraction_not_a_truncated_quotient() {
        // 1 / 3 of a cent is below half a cent; 2 / 3 above.
        assert_eq!(round("0.01", 3, 2, RoundingMode::HalfUp), "0.00");
        assert_eq!(round("0.02", 3, 2, RoundingMode::HalfUp), "0.01");
        // Half a cent is 5368709.12 / 2^30; a hair below rounds down, a hair above up, in
        // every mode.
        assert_eq!(
            round("5368709.119999999999", 1 << 30, 2, RoundingMode::HalfUp),
            "0.00"
        );
        assert_eq!(
            round("5368709.120000000001", 1 << 30, 2, RoundingMode::HalfEven),
            "0.01"
        );
        // Exactly half a cent: 0.005 × 2^30 / 2^30.
        assert_eq!(
            round("5368709.12", 1 << 30, 2, RoundingMode::HalfUp),
            "0.01"
        );
        assert_eq!(
            round("5368709.12", 1 << 30, 2, RoundingMode::HalfEven),
            "0.00"
        );
    }

    #[test]
    fn rounding_to_zero_minor_units_and_three() {
        assert_eq!(round("1234.5", 1, 0, RoundingMode::HalfEven), "1234");
        assert_eq!(round("1.2345", 1, 3, RoundingMode::HalfEven), "1.234");
        assert_eq!(round("1.2355", 1, 3, RoundingMode::HalfEven), "1.236");
        assert_eq!(round("7", 1, 3, RoundingMode::HalfEven), "7.000");
    }

    #[test]
    fn multiplication_refuses_to_drop_digits() {
        let price: Decimal = "0.123456789012".parse().unwrap();
        assert_eq!(
            mul_exact(price, 1000, &ctx).unwrap().to_string(),
            "123.456789012000"
        );
        assert!(matches!(
            mul_exact(price, u128::from(u64::MAX) * 1000, &ctx),
            Err(crate::Error::Overflow { .. })
        ));
    }

    #[test]
    fn decimals_must_be_plain_strings() {
        assert!(decimal_string::parse("0.25").is_ok());
        assert!(decimal_string::parse("1e3").is_err());
        assert!(decimal_string::parse(" 1").is_err());
        assert!(decimal_string::parse("").is_err());
    }
}
