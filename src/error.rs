use std::fmt;

/// What went wrong, in words a user can act on.
#[derive(Debug)]
pub enum Error {
    /// A weights file is missing, unreadable, or not the network it was said to be.
    Weights(String),
    /// A manifest or a model configuration is wrong.
    Config(String),
    /// A request asks for something the model cannot do.
    Request(String),
    /// The caller asked the run to stop.
    Cancelled,
    Io(std::io::Error),
}

impl Error {
    pub fn weights(msg: impl Into<String>) -> Self {
        Error::Weights(msg.into())
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
    pub fn request(msg: impl Into<String>) -> Self {
        Error::Request(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Weights(m) => write!(f, "weights: {m}"),
            Error::Config(m) => write!(f, "configuration: {m}"),
            Error::Request(m) => write!(f, "request: {m}"),
            Error::Cancelled => write!(f, "cancelled"),
            Error::Io(e) => write!(f, "i/o: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}
