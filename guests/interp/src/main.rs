//! interp: a tiny bytecode VM (a `match` dispatch loop, i.e. br_table in
//! wasm) running Collatz step counts for 1..=N, plus a pipeline of trait
//! objects (call_indirect) over the same range.
use std::hint::black_box;

#[derive(Clone, Copy, Debug)]
enum Op {
    Push(i64),
    Load(u8),
    Store(u8),
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Gt,
    Jz(u32),
    Jnz(u32),
    Jmp(u32),
    Halt,
}

/// Label-resolving assembler: `L(n)` marks a label; jumps name labels.
enum Asm {
    L(u32),
    I(Op),
}

fn assemble(src: &[Asm]) -> Vec<Op> {
    let mut labels = [0u32; 16];
    let mut pc = 0;
    for a in src {
        match a {
            Asm::L(l) => labels[*l as usize] = pc,
            Asm::I(_) => pc += 1,
        }
    }
    src.iter()
        .filter_map(|a| match a {
            Asm::L(_) => None,
            Asm::I(Op::Jz(l)) => Some(Op::Jz(labels[*l as usize])),
            Asm::I(Op::Jnz(l)) => Some(Op::Jnz(labels[*l as usize])),
            Asm::I(Op::Jmp(l)) => Some(Op::Jmp(labels[*l as usize])),
            Asm::I(op) => Some(*op),
        })
        .collect()
}

fn run(code: &[Op], vars: &mut [i64; 8]) -> u64 {
    let mut stack: Vec<i64> = Vec::with_capacity(64);
    let mut pc = 0usize;
    let mut executed = 0u64;
    loop {
        let op = code[pc];
        pc += 1;
        executed += 1;
        match op {
            Op::Push(v) => stack.push(v),
            Op::Load(s) => stack.push(vars[s as usize]),
            Op::Store(s) => vars[s as usize] = stack.pop().unwrap(),
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Rem | Op::Eq | Op::Gt => {
                let b = stack.pop().unwrap();
                let a = stack.pop().unwrap();
                stack.push(match op {
                    Op::Add => a.wrapping_add(b),
                    Op::Sub => a.wrapping_sub(b),
                    Op::Mul => a.wrapping_mul(b),
                    Op::Div => a.wrapping_div(b),
                    Op::Rem => a.wrapping_rem(b),
                    Op::Eq => (a == b) as i64,
                    _ => (a > b) as i64,
                });
            }
            Op::Jz(t) => {
                if stack.pop().unwrap() == 0 {
                    pc = t as usize;
                }
            }
            Op::Jnz(t) => {
                if stack.pop().unwrap() != 0 {
                    pc = t as usize;
                }
            }
            Op::Jmp(t) => pc = t as usize,
            Op::Halt => return executed,
        }
    }
}

trait Stage {
    fn apply(&self, x: u64) -> u64;
}
struct AddC(u64);
struct MulC(u64);
struct XorShift(u32);
struct Collatz;
impl Stage for AddC {
    fn apply(&self, x: u64) -> u64 {
        x.wrapping_add(self.0)
    }
}
impl Stage for MulC {
    fn apply(&self, x: u64) -> u64 {
        x.wrapping_mul(self.0)
    }
}
impl Stage for XorShift {
    fn apply(&self, x: u64) -> u64 {
        x ^ (x >> self.0)
    }
}
impl Stage for Collatz {
    fn apply(&self, x: u64) -> u64 {
        if x % 2 == 0 {
            x / 2
        } else {
            x.wrapping_mul(3).wrapping_add(1)
        }
    }
}

fn main() {
    let n = common::arg_u64(40_000) as i64;
    use Asm::{I, L};
    use Op::*;
    // vars: 0 = n, 1 = x, 2 = total steps, 3 = limit
    let src = [
        L(0),
        I(Load(0)),
        I(Load(3)),
        I(Gt),
        I(Jnz(9)),
        I(Load(0)),
        I(Store(1)),
        L(1),
        I(Load(1)),
        I(Push(1)),
        I(Eq),
        I(Jnz(4)),
        I(Load(1)),
        I(Push(2)),
        I(Rem),
        I(Jz(2)),
        // x = 4x - x + 1
        I(Load(1)),
        I(Push(4)),
        I(Mul),
        I(Load(1)),
        I(Sub),
        I(Push(1)),
        I(Add),
        I(Store(1)),
        I(Jmp(3)),
        L(2),
        I(Load(1)),
        I(Push(2)),
        I(Div),
        I(Store(1)),
        L(3),
        I(Load(2)),
        I(Push(1)),
        I(Add),
        I(Store(2)),
        I(Jmp(1)),
        L(4),
        I(Load(0)),
        I(Push(1)),
        I(Add),
        I(Store(0)),
        I(Jmp(0)),
        L(9),
        I(Halt),
    ];
    let code = assemble(&src);
    let mut vars = [1, 0, 0, black_box(n), 0, 0, 0, 0];
    let executed = run(black_box(&code), &mut vars);
    println!(
        "vm: collatz 1..={n}: total_steps={} ops_executed={executed}",
        vars[2]
    );

    // Trait-object pipeline: the stage order comes from the PRNG, so the
    // calls stay indirect.
    let mut rng = common::Rng::new(0x5EED_000C);
    let stages: Vec<Box<dyn Stage>> = (0..16)
        .map(|_| -> Box<dyn Stage> {
            match rng.below(4) {
                0 => Box::new(AddC(rng.next_u64() | 1)),
                1 => Box::new(MulC(rng.next_u64() | 1)),
                2 => Box::new(XorShift(1 + rng.below(31) as u32)),
                _ => Box::new(Collatz),
            }
        })
        .collect();
    let mut acc = 0u64;
    for x in 0..(n as u64) * 8 {
        let mut v = x;
        for s in &stages {
            v = s.apply(v);
        }
        acc = acc.wrapping_add(v);
    }
    println!(
        "dyn: {} stages x {} values: acc={acc:016x}",
        stages.len(),
        n * 8
    );
}
