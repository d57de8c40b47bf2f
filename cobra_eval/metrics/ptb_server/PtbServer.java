// A long-lived Stanford PTBTokenizer for cobra_eval.metrics.ptb: one JVM serves many requests.
//
// Each request is handed to the unmodified PTBTokenizer.main with the arguments
// pycocoevalcap uses (-preserveLines -lowerCase), its text as System.in and a
// buffer as System.out, so a reply holds exactly what one `java ... PTBTokenizer
// -preserveLines -lowerCase file` run prints for the same text (main reads a
// file and stdin the same way: UTF-8 through an InputStreamReader).
//
// Framing, all on the real stdin/stdout:
//   request: "<n>\n" then n bytes of UTF-8 text
//   reply:   "OK <n>\n" then n bytes (the tokenizer's stdout), or
//            "ERR <n>\n" then n bytes of UTF-8 error text
// On start it writes "READY 0\n"; it exits at the end of its stdin.

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;

public final class PtbServer {
    public static void main(String[] args) throws IOException {
        DataInputStream in = new DataInputStream(
            new BufferedInputStream(new FileInputStream(FileDescriptor.in), 1 << 16));
        OutputStream out = new BufferedOutputStream(
            new FileOutputStream(FileDescriptor.out), 1 << 16);
        // PTBTokenizer reports its speed on System.err after every call: drop it, or a
        // parent that never reads stderr would eventually block us
        PrintStream quiet = new PrintStream(OutputStream.nullOutputStream());
        // load and initialise the tokenizer before saying READY, so the first request is quick
        tokenize("warm up\n".getBytes(StandardCharsets.UTF_8), quiet);
        out.write("READY 0\n".getBytes(StandardCharsets.US_ASCII));
        out.flush();
        while (true) {
            String header = readHeader(in);
            if (header == null) {
                return;
            }
            byte[] request = new byte[Integer.parseInt(header)];
            in.readFully(request);
            String status;
            byte[] reply;
            try {
                reply = tokenize(request, quiet);
                status = "OK ";
            } catch (Exception | StackOverflowError | OutOfMemoryError e) {
                StringWriter trace = new StringWriter();
                e.printStackTrace(new PrintWriter(trace));
                reply = trace.toString().getBytes(StandardCharsets.UTF_8);
                status = "ERR ";
            }
            out.write((status + reply.length + "\n").getBytes(StandardCharsets.US_ASCII));
            out.write(reply);
            out.flush();
        }
    }

    private static byte[] tokenize(byte[] text, PrintStream quiet) throws IOException {
        InputStream realIn = System.in;
        PrintStream realOut = System.out;
        PrintStream realErr = System.err;
        ByteArrayOutputStream buffer = new ByteArrayOutputStream(text.length + 1024);
        System.setIn(new ByteArrayInputStream(text));
        System.setOut(new PrintStream(buffer));
        System.setErr(quiet);
        try {
            edu.stanford.nlp.process.PTBTokenizer.main(
                new String[] {"-preserveLines", "-lowerCase"});
        } finally {
            System.setIn(realIn);
            System.setOut(realOut);
            System.setErr(realErr);
        }
        return buffer.toByteArray();
    }

    /** The decimal length line of the next request, or null at the end of stdin. */
    private static String readHeader(DataInputStream in) throws IOException {
        StringBuilder line = new StringBuilder();
        while (true) {
            int c = in.read();
            if (c < 0) {
                if (line.length() == 0) {
                    return null;
                }
                throw new EOFException("stdin ended inside a request header");
            }
            if (c == '\n') {
                return line.toString();
            }
            line.append((char) c);
        }
    }
}
