//! JSDL 1.0 job descriptions (OGF GFD.56 with its POSIX application extension),
//! read with quick-xml: what a job unit runs, as whom, with which limits, and
//! which kernel checkpointer it needs (the seed's `<Checkpointer>` element of
//! `JobDescription`).
//!
//! Every element of the JSDL namespaces is either honoured or refused with an
//! error naming it; elements of other namespaces (extensions) are ignored and
//! listed in [`JobDescription::ignored`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use serde::{Deserialize, Serialize};

/// The JSDL namespace.
pub const JSDL_NS: &str = "http://schemas.ggf.org/jsdl/2005/11/jsdl";
/// The JSDL POSIX application namespace.
pub const POSIX_NS: &str = "http://schemas.ggf.org/jsdl/2005/11/jsdl-posix";

/// Kernel checkpointer a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointerKind {
    /// Built-in checkpointer, one unit per application (the default).
    Native,
    /// The whole job unit in a container (`OpenVZ` or `container`).
    Container,
    /// CRIU.
    Criu,
}

impl CheckpointerKind {
    /// Parses the text of `<Checkpointer>`.
    pub fn parse(s: &str) -> Option<CheckpointerKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openvz" | "container" => Some(CheckpointerKind::Container),
            "native" => Some(CheckpointerKind::Native),
            "criu" => Some(CheckpointerKind::Criu),
            _ => None,
        }
    }

    /// Its name among the backends of the common checkpointer API.
    pub fn backend(self) -> &'static str {
        match self {
            CheckpointerKind::Native => crate::app::NATIVE,
            CheckpointerKind::Criu => crate::app::CRIU,
            CheckpointerKind::Container => crate::gcp::container::CONTAINER,
        }
    }
}

/// The POSIX limits of a job (`jsdl-posix:*Limit`), all as given (bytes,
/// seconds or counts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLimits {
    pub wall_time: Option<u64>,
    pub cpu_time: Option<u64>,
    pub memory: Option<u64>,
    pub virtual_memory: Option<u64>,
    pub file_size: Option<u64>,
    pub open_descriptors: Option<u64>,
    pub process_count: Option<u64>,
    pub thread_count: Option<u64>,
    pub stack_size: Option<u64>,
    pub core_dump: Option<u64>,
    pub data_segment: Option<u64>,
    pub locked_memory: Option<u64>,
}

impl JobLimits {
    fn slot(&mut self, element: &str) -> Option<&mut Option<u64>> {
        Some(match element {
            "WallTimeLimit" => &mut self.wall_time,
            "CPUTimeLimit" => &mut self.cpu_time,
            "MemoryLimit" => &mut self.memory,
            "VirtualMemoryLimit" => &mut self.virtual_memory,
            "FileSizeLimit" => &mut self.file_size,
            "OpenDescriptorsLimit" => &mut self.open_descriptors,
            "ProcessCountLimit" => &mut self.process_count,
            "ThreadCountLimit" => &mut self.thread_count,
            "StackSizeLimit" => &mut self.stack_size,
            "CoreDumpLimit" => &mut self.core_dump,
            "DataSegmentLimit" => &mut self.data_segment,
            "LockedMemoryLimit" => &mut self.locked_memory,
            _ => return None,
        })
    }

    /// The cgroup limits they give: memory, and tasks (processes and threads
    /// share the pids controller, so the smaller of the two counts).
    pub fn cgroup(&self) -> crate::cgroup::Limits {
        crate::cgroup::Limits {
            memory_max: self.memory,
            pids_max: match (self.process_count, self.thread_count) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            ..Default::default()
        }
    }

    /// The rlimits (setrlimit(2) resource, value) the job's processes get.
    pub fn rlimits(&self) -> Vec<(Rlimit, u64)> {
        [
            (Rlimit::Cpu, self.cpu_time),
            (Rlimit::As, self.virtual_memory),
            (Rlimit::Fsize, self.file_size),
            (Rlimit::Nofile, self.open_descriptors),
            (Rlimit::Stack, self.stack_size),
            (Rlimit::Core, self.core_dump),
            (Rlimit::Data, self.data_segment),
            (Rlimit::Memlock, self.locked_memory),
        ]
        .into_iter()
        .filter_map(|(r, v)| v.map(|v| (r, v)))
        .collect()
    }
}

/// A process resource limit a JSDL limit maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rlimit {
    Cpu,
    As,
    Fsize,
    Nofile,
    Stack,
    Core,
    Data,
    Memlock,
}

impl Rlimit {
    /// nix's name of the resource.
    pub fn resource(self) -> nix::sys::resource::Resource {
        use nix::sys::resource::Resource;
        match self {
            Rlimit::Cpu => Resource::RLIMIT_CPU,
            Rlimit::As => Resource::RLIMIT_AS,
            Rlimit::Fsize => Resource::RLIMIT_FSIZE,
            Rlimit::Nofile => Resource::RLIMIT_NOFILE,
            Rlimit::Stack => Resource::RLIMIT_STACK,
            Rlimit::Core => Resource::RLIMIT_CORE,
            Rlimit::Data => Resource::RLIMIT_DATA,
            Rlimit::Memlock => Resource::RLIMIT_MEMLOCK,
        }
    }
}

/// What a JSDL document asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDescription {
    pub name: Option<String>,
    pub executable: String,
    pub arguments: Vec<String>,
    pub input: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub error: Option<PathBuf>,
    pub working_directory: Option<PathBuf>,
    pub environment: BTreeMap<String, String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub limits: JobLimits,
    /// `None` when the document has no `<Checkpointer>` (then native).
    pub checkpointer: Option<CheckpointerKind>,
    /// Extension elements (outside the JSDL namespaces) that were ignored.
    pub ignored: Vec<String>,
}

impl JobDescription {
    /// The checkpointer to use.
    pub fn checkpointer(&self) -> CheckpointerKind {
        self.checkpointer.unwrap_or(CheckpointerKind::Native)
    }

    /// A stream file as the job sees it: relative names are in the working directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        match &self.working_directory {
            Some(wd) if p.is_relative() => wd.join(p),
            _ => p.to_path_buf(),
        }
    }
}

/// Why a JSDL document is refused.
#[derive(Debug, thiserror::Error)]
pub enum JsdlError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("JSDL: not well-formed XML: {0}")]
    Xml(String),
    #[error("JSDL: the document element is {0}, not jsdl:JobDefinition")]
    NotJsdl(String),
    #[error("JSDL: element {element} is missing")]
    Missing { element: &'static str },
    #[error("JSDL: element {element} is not supported by this node")]
    Unsupported { element: String },
    #[error("JSDL: element {element} appears more than once")]
    Duplicate { element: String },
    #[error("JSDL: {element} '{value}' is not a non-negative integer")]
    BadLimit { element: String, value: String },
    #[error("JSDL: unknown Checkpointer '{0}' (known: OpenVZ, container, native, CRIU)")]
    UnknownCheckpointer(String),
    #[error("JSDL: {element}: {reason}")]
    Invalid { element: String, reason: String },
}

type Result<T> = std::result::Result<T, JsdlError>;

/// One element of the document, with its namespace resolved.
#[derive(Debug, Default)]
struct Node {
    ns: Option<String>,
    name: String,
    attrs: Vec<(Option<String>, String, String)>,
    text: String,
    children: Vec<Node>,
}

impl Node {
    fn is_jsdl(&self) -> bool {
        matches!(self.ns.as_deref(), Some(JSDL_NS) | Some(POSIX_NS))
    }

    /// Attributes other than the ones in `allowed` are refused (namespaced
    /// ones of other vocabularies are ignored).
    fn check_attrs(&self, allowed: &[&str]) -> Result<()> {
        for (ns, name, _) in &self.attrs {
            let foreign = ns.as_deref().is_some_and(|n| n != JSDL_NS && n != POSIX_NS);
            if !foreign && !allowed.contains(&name.as_str()) {
                return Err(JsdlError::Unsupported {
                    element: format!("{}/@{name}", self.name),
                });
            }
        }
        Ok(())
    }

    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(ns, n, _)| ns.is_none() && n == name)
            .map(|(_, _, v)| v.as_str())
    }
}

fn parse_tree(xml: &str) -> Result<Node> {
    let mut reader = NsReader::from_str(xml);
    let mut stack: Vec<Node> = vec![Node::default()];
    let xml_err = |e: &dyn std::fmt::Display| JsdlError::Xml(e.to_string());
    loop {
        let (resolved, ev) = reader.read_resolved_event().map_err(|e| xml_err(&e))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let ns = match resolved {
                    ResolveResult::Bound(n) => Some(String::from_utf8_lossy(n.as_ref()).into()),
                    ResolveResult::Unbound => None,
                    ResolveResult::Unknown(p) => {
                        return Err(JsdlError::Xml(format!(
                            "unknown namespace prefix '{}'",
                            String::from_utf8_lossy(&p)
                        )))
                    }
                };
                let mut node = Node {
                    ns,
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    ..Node::default()
                };
                for a in e.attributes() {
                    let a = a.map_err(|e| xml_err(&e))?;
                    if a.key.as_namespace_binding().is_some() {
                        continue;
                    }
                    let (ans, local) = reader.resolve_attribute(a.key);
                    let ans = match ans {
                        ResolveResult::Bound(n) => Some(String::from_utf8_lossy(n.as_ref()).into()),
                        _ => None,
                    };
                    let value = a.unescape_value().map_err(|e| xml_err(&e))?.into_owned();
                    node.attrs.push((
                        ans,
                        String::from_utf8_lossy(local.as_ref()).into_owned(),
                        value,
                    ));
                }
                if matches!(ev, Event::Empty(_)) {
                    stack.last_mut().expect("root").children.push(node);
                } else {
                    stack.push(node);
                }
            }
            Event::End(_) => {
                let node = stack.pop().expect("balanced");
                stack
                    .last_mut()
                    .ok_or_else(|| JsdlError::Xml("unbalanced end tag".into()))?
                    .children
                    .push(node);
            }
            Event::Text(t) => {
                let s = t.unescape().map_err(|e| xml_err(&e))?;
                stack.last_mut().expect("root").text.push_str(&s);
            }
            Event::CData(t) => {
                let s = String::from_utf8_lossy(&t.into_inner()).into_owned();
                stack.last_mut().expect("root").text.push_str(&s);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let mut doc = stack.pop().expect("root");
    if !stack.is_empty() {
        return Err(JsdlError::Xml("unexpected end of document".into()));
    }
    match doc.children.len() {
        1 => Ok(doc.children.remove(0)),
        0 => Err(JsdlError::Xml("no document element".into())),
        _ => Err(JsdlError::Xml("more than one document element".into())),
    }
}

/// Parses and checks a JSDL document.
pub fn parse(xml: &str) -> Result<JobDescription> {
    let root = parse_tree(xml)?;
    if root.ns.as_deref() != Some(JSDL_NS) || root.name != "JobDefinition" {
        return Err(JsdlError::NotJsdl(root.name));
    }
    root.check_attrs(&["id"])?;
    let mut job = JobDescription::default();
    let mut seen_description = false;
    for child in &root.children {
        match (child.is_jsdl(), child.name.as_str()) {
            (true, "JobDescription") if !seen_description => {
                seen_description = true;
                description(child, &mut job)?;
            }
            (true, "JobDescription") => return Err(duplicate("JobDescription")),
            (true, other) => return Err(unsupported(other)),
            (false, other) => job.ignored.push(other.to_string()),
        }
    }
    if !seen_description {
        return Err(JsdlError::Missing {
            element: "JobDescription",
        });
    }
    if job.executable.is_empty() {
        return Err(JsdlError::Missing {
            element: "POSIXApplication/Executable",
        });
    }
    for ignored in &job.ignored {
        log::warn!("JSDL: extension element {ignored} ignored");
    }
    Ok(job)
}

/// Reads and parses the JSDL file `path`.
pub fn parse_file(path: &Path) -> Result<JobDescription> {
    let text = std::fs::read_to_string(path).map_err(|source| JsdlError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text)
}

fn unsupported(element: &str) -> JsdlError {
    JsdlError::Unsupported {
        element: element.to_string(),
    }
}

fn duplicate(element: &str) -> JsdlError {
    JsdlError::Duplicate {
        element: element.to_string(),
    }
}

fn description(node: &Node, job: &mut JobDescription) -> Result<()> {
    node.check_attrs(&[])?;
    for child in &node.children {
        // The seed's element: in the JSDL namespace or in none.
        if child.name == "Checkpointer" && (child.is_jsdl() || child.ns.is_none()) {
            if job.checkpointer.is_some() {
                return Err(duplicate("Checkpointer"));
            }
            let text = child.text.trim();
            job.checkpointer = Some(
                CheckpointerKind::parse(text)
                    .ok_or_else(|| JsdlError::UnknownCheckpointer(text.to_string()))?,
            );
            continue;
        }
        if !child.is_jsdl() {
            job.ignored.push(child.name.clone());
            continue;
        }
        match child.name.as_str() {
            "JobIdentification" => identification(child, job)?,
            "Application" => application(child, job)?,
            other => return Err(unsupported(other)),
        }
    }
    Ok(())
}

fn identification(node: &Node, job: &mut JobDescription) -> Result<()> {
    for child in &node.children {
        if !child.is_jsdl() {
            job.ignored.push(child.name.clone());
            continue;
        }
        match child.name.as_str() {
            "JobName" => job.name = Some(child.text.trim().to_string()),
            // Informational: nothing to honour.
            "Description" | "JobAnnotation" | "JobProject" => {}
            other => return Err(unsupported(other)),
        }
    }
    Ok(())
}

fn application(node: &Node, job: &mut JobDescription) -> Result<()> {
    let mut posix = false;
    for child in &node.children {
        if !child.is_jsdl() {
            job.ignored.push(child.name.clone());
            continue;
        }
        match (child.ns.as_deref(), child.name.as_str()) {
            (Some(JSDL_NS), "ApplicationName" | "ApplicationVersion" | "Description") => {}
            (Some(POSIX_NS), "POSIXApplication") if !posix => {
                posix = true;
                posix_application(child, job)?;
            }
            (Some(POSIX_NS), "POSIXApplication") => return Err(duplicate("POSIXApplication")),
            (_, other) => return Err(unsupported(other)),
        }
    }
    if !posix {
        return Err(JsdlError::Missing {
            element: "Application/POSIXApplication",
        });
    }
    Ok(())
}

fn set_once<T>(slot: &mut Option<T>, element: &str, value: T) -> Result<()> {
    if slot.is_some() {
        return Err(duplicate(element));
    }
    *slot = Some(value);
    Ok(())
}

fn posix_application(node: &Node, job: &mut JobDescription) -> Result<()> {
    node.check_attrs(&["name"])?;
    let mut executable = None;
    for child in &node.children {
        if !child.is_jsdl() {
            job.ignored.push(child.name.clone());
            continue;
        }
        if child.ns.as_deref() != Some(POSIX_NS) {
            return Err(unsupported(&child.name));
        }
        let name = child.name.as_str();
        // File system names (filesystemName=) would need JSDL's FileSystem
        // resources, which this node does not provide.
        child.check_attrs(if name == "Environment" {
            &["name"]
        } else {
            &[]
        })?;
        let text = child.text.trim().to_string();
        let path = || {
            if text.is_empty() {
                Err(JsdlError::Invalid {
                    element: name.to_string(),
                    reason: "empty".into(),
                })
            } else {
                Ok(PathBuf::from(&text))
            }
        };
        match name {
            "Executable" => set_once(&mut executable, name, text.clone())?,
            // Arguments keep their spaces, as xsd:normalizedString.
            "Argument" => job.arguments.push(child.text.clone()),
            "Input" => set_once(&mut job.input, name, path()?)?,
            "Output" => set_once(&mut job.output, name, path()?)?,
            "Error" => set_once(&mut job.error, name, path()?)?,
            "WorkingDirectory" => {
                let p = path()?;
                if p.is_relative() {
                    return Err(JsdlError::Invalid {
                        element: name.into(),
                        reason: format!("'{}' is not an absolute path", p.display()),
                    });
                }
                set_once(&mut job.working_directory, name, p)?
            }
            "Environment" => {
                let var = child.attr("name").unwrap_or_default();
                if var.is_empty() || var.contains('=') {
                    return Err(JsdlError::Invalid {
                        element: name.into(),
                        reason: format!("invalid variable name '{var}'"),
                    });
                }
                job.environment.insert(var.to_string(), child.text.clone());
            }
            "UserName" => set_once(&mut job.user, name, text.clone())?,
            "GroupName" => set_once(&mut job.group, name, text.clone())?,
            _ => match job.limits.slot(name) {
                Some(slot) => {
                    let v = text.parse::<u64>().map_err(|_| JsdlError::BadLimit {
                        element: name.to_string(),
                        value: text.clone(),
                    })?;
                    set_once(slot, name, v)?
                }
                None => return Err(unsupported(name)),
            },
        }
    }
    match executable {
        Some(e) if !e.is_empty() => job.executable = e,
        _ => {
            return Err(JsdlError::Missing {
                element: "POSIXApplication/Executable",
            })
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(posix: &str, extra: &str) -> String {
        format!(
            r#"<?xml version="1.0"?>
<jsdl:JobDefinition xmlns:jsdl="{JSDL_NS}" xmlns:p="{POSIX_NS}" xmlns:x="urn:other">
 <jsdl:JobDescription>
  <jsdl:JobIdentification><jsdl:JobName>demo</jsdl:JobName></jsdl:JobIdentification>
  <jsdl:Application><p:POSIXApplication>{posix}</p:POSIXApplication></jsdl:Application>
  {extra}
 </jsdl:JobDescription>
</jsdl:JobDefinition>"#
        )
    }

    #[test]
    fn full_document() {
        let j = parse(&doc(
            "<p:Executable>/bin/echo</p:Executable><p:Argument>a b</p:Argument>\
             <p:Argument>&lt;c&gt;</p:Argument><p:Output>out</p:Output>\
             <p:WorkingDirectory>/tmp</p:WorkingDirectory>\
             <p:Environment name=\"K\">v=1</p:Environment>\
             <p:MemoryLimit>1048576</p:MemoryLimit><p:ProcessCountLimit>20</p:ProcessCountLimit>\
             <p:ThreadCountLimit>30</p:ThreadCountLimit><p:WallTimeLimit>5</p:WallTimeLimit>\
             <p:UserName>nobody</p:UserName><x:Hint>yes</x:Hint>",
            "<Checkpointer>OpenVZ</Checkpointer><x:Other/>",
        ))
        .unwrap();
        assert_eq!(j.name.as_deref(), Some("demo"));
        assert_eq!(j.executable, "/bin/echo");
        assert_eq!(j.arguments, ["a b", "<c>"]);
        assert_eq!(j.resolve(j.output.as_ref().unwrap()), Path::new("/tmp/out"));
        assert_eq!(j.environment["K"], "v=1");
        assert_eq!(j.checkpointer(), CheckpointerKind::Container);
        assert_eq!(j.limits.cgroup().pids_max, Some(20));
        assert_eq!(j.limits.cgroup().memory_max, Some(1 << 20));
        assert_eq!(j.limits.wall_time, Some(5));
        assert_eq!(j.user.as_deref(), Some("nobody"));
        assert_eq!(j.ignored, ["Hint", "Other"]);
    }

    #[test]
    fn defaults_to_native() {
        let j = parse(&doc("<p:Executable>true</p:Executable>", "")).unwrap();
        assert_eq!(j.checkpointer(), CheckpointerKind::Native);
        let j = parse(&doc(
            "<p:Executable>true</p:Executable>",
            "<jsdl:Checkpointer>CRIU</jsdl:Checkpointer>",
        ))
        .unwrap();
        assert_eq!(j.checkpointer(), CheckpointerKind::Criu);
    }

    #[test]
    fn refusals_name_the_element() {
        let e = |posix: &str, extra: &str| parse(&doc(posix, extra)).unwrap_err().to_string();
        assert!(e("<p:Argument>x</p:Argument>", "").contains("Executable"));
        assert!(e(
            "<p:Executable>a</p:Executable><p:MemoryLimit>-1</p:MemoryLimit>",
            ""
        )
        .contains("MemoryLimit '-1'"));
        assert!(e(
            "<p:Executable>a</p:Executable>",
            "<Checkpointer>BLCR</Checkpointer>"
        )
        .contains("unknown Checkpointer 'BLCR'"));
        assert!(e("<p:Executable>a</p:Executable>", "<jsdl:DataStaging/>").contains("DataStaging"));
        assert!(
            e("<p:Executable filesystemName=\"HOME\">a</p:Executable>", "")
                .contains("Executable/@filesystemName")
        );
        assert!(e("<p:Executable>a</p:Executable><p:Bogus/>", "").contains("Bogus"));
        assert!(parse("<a/>")
            .unwrap_err()
            .to_string()
            .contains("JobDefinition"));
        assert!(parse("<a>").is_err());
    }
}
