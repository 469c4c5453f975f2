//! A route's `methods`, tested without allocating or comparing strings for the standard ones.

use http::Method;

/// The standard methods as bits, extension methods by name.
pub struct MethodSet {
    bits: u16,
    other: Vec<Method>,
}

fn bit(method: &Method) -> Option<u16> {
    let i = match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => return None,
    };
    Some(1 << i)
}

impl MethodSet {
    pub fn new(methods: &[Method]) -> Self {
        let mut set = Self {
            bits: 0,
            other: Vec::new(),
        };
        for m in methods {
            match bit(m) {
                Some(b) => set.bits |= b,
                None => set.other.push(m.clone()),
            }
        }
        set
    }

    pub fn contains(&self, method: &Method) -> bool {
        match bit(method) {
            Some(b) => self.bits & b != 0,
            None => self.other.contains(method),
        }
    }
}
