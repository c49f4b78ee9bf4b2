//! The UNet's layer plan: which residual, attention, down- and upsampling layers a UNet of
//! given widths builds, in forward order (`UNetConfig::plan`). Validation and the constructor
//! both walk it, so the two can never disagree about what gets built, and `interop` walks it to
//! name the layers as diffusers' UNet2DModel does.

/// One layer of the plan, in forward order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Block {
    /// A residual block `cin -> cout` at `level` (the number of downsamplings before it).
    Res {
        cin: usize,
        cout: usize,
        level: usize,
    },
    /// Self-attention over `c` channels at feature-map height `height`, at `level`.
    Attn {
        c: usize,
        height: usize,
        level: usize,
    },
    /// Conv3x3 with stride 2 over `c` channels, ending `level`.
    Down { c: usize, level: usize },
    /// Nearest x2 upsampling, then Conv3x3 over `c` channels, ending `level` (on the way up).
    Up { c: usize, level: usize },
}

/// The layers the UNet is made of, in the order of ref_unet.py (flat lists, so checkpoint keys
/// `down.{i}` / `up.{i}` match its state_dict).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub down: Vec<Block>,
    /// [Res, Attn, Res] at the lowest resolution.
    pub mid: [Block; 3],
    pub up: Vec<Block>,
    /// Channels entering the output GroupNorm.
    pub out_channels: usize,
}

/// The widths and depths a plan is made from (the UNetConfig keys of the same names).
pub(crate) struct Shape<'a> {
    pub base_channels: usize,
    pub channel_mult: &'a [usize],
    pub num_res_blocks: usize,
    pub attention_resolutions: &'a [usize],
}

impl Shape<'_> {
    /// The layer plan for images of height `height` (WORKLOADS.md / ref_unet.py): per level,
    /// num_res_blocks residual blocks (each followed by attention at attention resolutions),
    /// then a downsampling except at the last level; the middle; the mirror image upwards with
    /// num_res_blocks + 1 blocks per level, each eating one skip.
    pub(crate) fn plan(self, height: usize) -> Plan {
        let ch = self.base_channels;
        let last = self.channel_mult.len().saturating_sub(1);
        let attends = |level: usize| self.attention_resolutions.contains(&(height >> level));
        let (mut down, mut up) = (Vec::new(), Vec::new());
        let mut skips = vec![ch];
        let mut cur = ch;
        for (level, &m) in self.channel_mult.iter().enumerate() {
            for _ in 0..self.num_res_blocks {
                down.push(Block::Res {
                    cin: cur,
                    cout: ch * m,
                    level,
                });
                cur = ch * m;
                if attends(level) {
                    down.push(Block::Attn {
                        c: cur,
                        height: height >> level,
                        level,
                    });
                }
                skips.push(cur);
            }
            if level != last {
                down.push(Block::Down { c: cur, level });
                skips.push(cur);
            }
        }
        let mid = [
            Block::Res {
                cin: cur,
                cout: cur,
                level: last,
            },
            Block::Attn {
                c: cur,
                height: height >> last,
                level: last,
            },
            Block::Res {
                cin: cur,
                cout: cur,
                level: last,
            },
        ];
        for (level, &m) in self.channel_mult.iter().enumerate().rev() {
            for _ in 0..=self.num_res_blocks {
                let skip = skips.pop().unwrap_or(0);
                up.push(Block::Res {
                    cin: cur + skip,
                    cout: ch * m,
                    level,
                });
                cur = ch * m;
                if attends(level) {
                    up.push(Block::Attn {
                        c: cur,
                        height: height >> level,
                        level,
                    });
                }
            }
            if level != 0 {
                up.push(Block::Up { c: cur, level });
            }
        }
        Plan {
            down,
            mid,
            up,
            out_channels: cur,
        }
    }
}
